//! Key paths (`route[1].claims[0].equals`) and what they point at in a TOML document.
//!
//! Every configuration problem is reported at a key path; this module turns a path into the
//! 1-based line an operator should look at, using the spans `toml_edit::ImDocument` keeps from
//! parsing. It also removes the value at a path from a `DocumentMut`, which is how the loader
//! gets past one bad value to find the next one. It knows nothing about the schema.

use std::fmt;

use toml_edit::{DocumentMut, ImDocument, Item, TableLike, Value};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path from the document root, displayed as in SPEC §2: keys joined by `.`, indices as `[i]`
/// counting from 0, the root itself as `.`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct KeyPath(Vec<Seg>);

impl KeyPath {
    pub(crate) fn root() -> KeyPath {
        KeyPath(Vec::new())
    }

    pub(crate) fn key(&self, key: &str) -> KeyPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        KeyPath(segs)
    }

    pub(crate) fn index(&self, index: usize) -> KeyPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        KeyPath(segs)
    }

    pub(crate) fn segs(&self) -> &[Seg] {
        &self.0
    }

    /// True when `self` is `prefix` or lies inside it.
    pub(crate) fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The path serde_path_to_error reports for a deserialization error.
    pub(crate) fn from_serde(path: &serde_path_to_error::Path) -> KeyPath {
        use serde_path_to_error::Segment;
        KeyPath(
            path.iter()
                .map(|s| match s {
                    Segment::Seq { index } => Seg::Index(*index),
                    Segment::Map { key } => Seg::Key(key.clone()),
                    Segment::Enum { variant } => Seg::Key(variant.clone()),
                    Segment::Unknown => Seg::Key("?".to_owned()),
                })
                .collect(),
        )
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A node reached while walking a path: tables and arrays come in several TOML spellings.
enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a toml_edit::Table),
}

impl<'a> Node<'a> {
    fn table_like(&self) -> Option<&'a dyn TableLike> {
        match *self {
            Node::Item(i) => i.as_table_like(),
            Node::Value(v) => v.as_inline_table().map(|t| t as &dyn TableLike),
            Node::Table(t) => Some(t as &dyn TableLike),
        }
    }

    fn element(&self, index: usize) -> Option<Node<'a>> {
        match *self {
            Node::Item(Item::ArrayOfTables(a)) => a.get(index).map(Node::Table),
            Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                a.get(index).map(Node::Value)
            }
            _ => None,
        }
    }

    fn span_start(&self) -> Option<usize> {
        match *self {
            Node::Item(i) => i.span(),
            Node::Value(v) => v.span(),
            Node::Table(t) => t.span(),
        }
        .map(|r| r.start)
    }
}

/// 1-based line of the key (or array element) at `path`. A path that does not exist in the
/// document (a missing required key) gives the line of the deepest part that does: for
/// `server.listen` without a `listen`, the `[server]` header; with no `[server]` either, line 1.
pub(crate) fn line_of(doc: &ImDocument<&str>, path: &KeyPath) -> usize {
    let mut node = Node::Item(doc.as_item());
    let mut best: Option<usize> = None;
    for seg in path.segs() {
        let next = match seg {
            Seg::Key(k) => node
                .table_like()
                .and_then(|t| t.get_key_value(k))
                .map(|(key, item)| {
                    let start = key
                        .span()
                        .map(|r| r.start)
                        .or_else(|| item.span().map(|r| r.start));
                    (Node::Item(item), start)
                }),
            Seg::Index(i) => node.element(*i).map(|n| {
                let start = n.span_start();
                (n, start)
            }),
        };
        match next {
            Some((n, start)) => {
                node = n;
                best = start.or(best);
            }
            None => break,
        }
    }
    best.map_or(1, |offset| line_at(doc.raw(), offset))
}

/// 1-based line of a byte offset.
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// Removes what `path` points at so that deserialization can go on past it. A path ending in an
/// array index removes the whole array (removing one element would renumber the others, and
/// every later message would name the wrong index). Returns the path actually removed, or `None`
/// when nothing could be removed (the path does not exist, or is the root).
pub(crate) fn remove(doc: &mut DocumentMut, path: &KeyPath) -> Option<KeyPath> {
    let mut segs = path.segs();
    while let Some((Seg::Index(_), rest)) = segs.split_last() {
        segs = rest;
    }
    let (Seg::Key(last), parent) = segs.split_last()? else {
        return None;
    };
    let table = table_like_mut(doc.as_item_mut(), parent)?;
    table.remove(last)?;
    Some(KeyPath(segs.to_vec()))
}

fn table_like_mut<'a>(item: &'a mut Item, segs: &[Seg]) -> Option<&'a mut dyn TableLike> {
    let Some((first, rest)) = segs.split_first() else {
        return item.as_table_like_mut();
    };
    match (first, item) {
        (Seg::Key(k), item) => table_like_mut(item.as_table_like_mut()?.get_mut(k)?, rest),
        (Seg::Index(i), Item::ArrayOfTables(a)) => {
            let table = a.get_mut(*i)?;
            match rest.split_first() {
                None => Some(table),
                Some((Seg::Key(k), rest)) => table_like_mut(table.get_mut(k)?, rest),
                Some((Seg::Index(_), _)) => None,
            }
        }
        (Seg::Index(i), Item::Value(Value::Array(a))) => value_table_like_mut(a.get_mut(*i)?, rest),
        _ => None,
    }
}

fn value_table_like_mut<'a>(value: &'a mut Value, segs: &[Seg]) -> Option<&'a mut dyn TableLike> {
    let Some((first, rest)) = segs.split_first() else {
        return value.as_inline_table_mut().map(|t| t as &mut dyn TableLike);
    };
    match (first, value) {
        (Seg::Key(k), Value::InlineTable(t)) => table_like_mut(TableLike::get_mut(t, k)?, rest),
        (Seg::Index(i), Value::Array(a)) => value_table_like_mut(a.get_mut(*i)?, rest),
        _ => None,
    }
}
