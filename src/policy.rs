//! Route policies (SPEC §3 `scopes`, `[[route.claims]]`, `[[route.any_of]]`; §4.6; §6 403s):
//! compiled once from the configuration, evaluated on every request.
//!
//! [`Policy::compile`] is the one place that knows what a valid rule is: a claim name or RFC 6901
//! JSON Pointer, exactly one operator, non-empty lists, a regular expression that compiles, values
//! that have a JSON equivalent, scope tokens, non-empty `any_of` blocks. The config loader calls
//! it and reports its problems at their key paths; it never checks rules itself. Compiling turns
//! every TOML value into a `serde_json::Value`, every `matches` into an anchored `Regex` and every
//! claim name into a [`ClaimPath`], so [`Policy::evaluate`] only reads: no parsing, no regex
//! compilation and no allocation for anything that came from the configuration.
//!
//! Evaluation order decides the answer: the route's own `scopes` first (a miss is
//! [`Decision::InsufficientScope`]), then its own claim rules, then the `any_of` blocks, of which
//! at least one must hold entirely, its scopes and its claims (a miss is
//! [`Decision::AccessDenied`]). Policies see the merged claims (token, then userinfo); which
//! claims userinfo may override is `userinfo`'s rule, turning a decision into a `Rejection` is
//! [`authorize()`]'s (phase 6), and rendering the 403 is `rejection.rs`'s.
//!
//! [`Policy::evaluate_traced`] is the one evaluation; it reports each check to an [`Observer`].
//! The request path passes `()`, whose calls compile away and which stops at the first failure;
//! `tokengate explain` passes one that asks for every check, so it can show them all.

mod authorize;

pub use authorize::{authorize, authorize_traced, Authorized};

use regex::Regex;
use serde_json::{Number, Value};

use crate::config::raw;
use crate::token::claims::ClaimPath;
use crate::token::claims::Claims;

/// A route's compiled policy: its own scopes and claim rules, plus any_of alternatives.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The route's own `scopes`, all required.
    scopes: Box<[String]>,
    /// The route's own `[[route.claims]]`, all required.
    rules: Box<[Rule]>,
    /// `[[route.any_of]]`: when non-empty, at least one block must hold.
    any_of: Box<[Block]>,
    /// `scopes` joined by a space, built once for the `insufficient_scope` challenge.
    challenge: String,
}

/// The outcome of a policy check (SPEC §3, §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// One of the route's own `scopes` is missing: 403 `insufficient_scope`.
    InsufficientScope,
    /// A claim rule failed, or no `any_of` block held: 403 `access_denied`.
    AccessDenied,
}

/// Receives each check [`Policy::evaluate_traced`] makes (`tokengate explain`).
pub trait Observer {
    /// `true`: evaluate and report every check, even once the decision is known; `false`: stop
    /// at the first failure (the request path).
    const EVERY: bool;
    fn check(&mut self, check: Check<'_, '_>);
}

/// The request path's observer: sees nothing, stops early, compiles away.
impl Observer for () {
    const EVERY: bool = false;
    #[inline(always)]
    fn check(&mut self, _: Check<'_, '_>) {}
}

/// One check and its verdict. `block` is the index of the `any_of` block it belongs to, `None`
/// for the route's own `scopes` and `claims`.
#[derive(Debug, Clone, Copy)]
pub enum Check<'p, 'c> {
    /// A required scope, granted or not by the caller's `scope` (else `scp`) claim.
    Scope {
        block: Option<usize>,
        scope: &'p str,
        holds: bool,
    },
    /// A claim rule, with the value it read (`None`: absent or `null`).
    Rule {
        block: Option<usize>,
        rule: &'p Rule,
        value: Option<&'c Value>,
        holds: bool,
    },
    /// An `any_of` block as a whole: all its scopes and rules held.
    Block { index: usize, holds: bool },
}

/// One `[[route.any_of]]` block: it holds when all its scopes and all its rules hold.
#[derive(Debug, Clone)]
struct Block {
    scopes: Box<[String]>,
    rules: Box<[Rule]>,
}

/// One compiled claim rule; its `Display` is the rule as configured (`groups contains "admin"`).
#[derive(Debug, Clone)]
pub struct Rule {
    claim: ClaimPath,
    op: Op,
}

/// A rule's operator with its operand in final form. Lists are never empty.
#[derive(Debug, Clone)]
enum Op {
    Equals(Value),
    OneOf(Box<[Value]>),
    Contains(Value),
    ContainsAny(Box<[Value]>),
    ContainsAll(Box<[Value]>),
    /// Anchored as `^(?:pattern)$`: the whole string must match.
    Matches(Regex),
    Exists(bool),
}

/// A problem found by [`Policy::compile`]: the key path below the route (`claims[0].matches`,
/// `any_of[1].scopes[0]`) and the message.
type Problem = (String, String);

impl Policy {
    /// Checks and compiles a route's policy. On failure, every problem found, each at its key
    /// path relative to the route (`scopes[1]`, `claims[0].matches`, `any_of[1].claims[0]`).
    pub fn compile(
        scopes: &[String],
        claims: &[raw::ClaimRule],
        any_of: &[raw::AnyOf],
    ) -> Result<Policy, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let own_scopes = scope_list(scopes, "scopes", &mut problems);
        let rules = rule_list(claims, "claims", &mut problems);
        let blocks = any_of
            .iter()
            .enumerate()
            .map(|(i, block)| {
                let at = format!("any_of[{i}]");
                if block.scopes.is_empty() && block.claims.is_empty() {
                    problems.push((
                        at.clone(),
                        "an any_of block needs scopes or claims (an empty block always holds)"
                            .to_owned(),
                    ));
                }
                Block {
                    scopes: scope_list(&block.scopes, &format!("{at}.scopes"), &mut problems),
                    rules: rule_list(&block.claims, &format!("{at}.claims"), &mut problems),
                }
            })
            .collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Policy {
            challenge: own_scopes.join(" "),
            scopes: own_scopes,
            rules,
            any_of: blocks,
        })
    }

    /// True when the policy lets every verified caller through (no scopes, rules or blocks).
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty() && self.rules.is_empty() && self.any_of.is_empty()
    }

    /// The route's own scopes, in configured order.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Evaluated on the merged claims (token claims, later merged with userinfo) — never on the token.
    #[inline]
    pub fn evaluate(&self, claims: &Claims) -> Decision {
        self.evaluate_traced(claims, &mut ())
    }

    /// [`Policy::evaluate`], reporting each check to `observer` in evaluation order: the route's
    /// own scopes, its own rules, then each `any_of` block's scopes and rules followed by the
    /// block's verdict. With [`Observer::EVERY`] every check runs (the decision is the same:
    /// a failing own scope decides `InsufficientScope` before anything else); without it the
    /// evaluation stops as soon as the decision is known.
    #[inline]
    pub fn evaluate_traced<O: Observer>(&self, claims: &Claims, observer: &mut O) -> Decision {
        let granted = Granted::of(claims);
        let mut decision = Decision::Allow;
        for scope in self.scopes.iter() {
            let holds = granted.has(scope);
            observer.check(Check::Scope {
                block: None,
                scope,
                holds,
            });
            if !holds {
                if !O::EVERY {
                    return Decision::InsufficientScope;
                }
                decision = Decision::InsufficientScope;
            }
        }
        for rule in self.rules.iter() {
            let (value, holds) = rule.verdict(claims);
            observer.check(Check::Rule {
                block: None,
                rule,
                value,
                holds,
            });
            if !holds {
                if !O::EVERY {
                    return Decision::AccessDenied;
                }
                if decision == Decision::Allow {
                    decision = Decision::AccessDenied;
                }
            }
        }
        if self.any_of.is_empty() {
            return decision;
        }
        let mut any = false;
        for (index, block) in self.any_of.iter().enumerate() {
            let holds = block.holds(index, &granted, claims, observer);
            observer.check(Check::Block { index, holds });
            if holds {
                any = true;
                if !O::EVERY {
                    break;
                }
            }
        }
        if !any && decision == Decision::Allow {
            decision = Decision::AccessDenied;
        }
        decision
    }

    /// The route's own scopes joined by a space, for the insufficient_scope challenge (precomputed).
    pub fn scope_challenge(&self) -> &str {
        &self.challenge
    }
}

// ---------------------------------------------------------------------------------------------
// Compiling
// ---------------------------------------------------------------------------------------------

/// A claim reference from the configuration: a top-level claim name, or an RFC 6901 JSON Pointer
/// when it starts with `/`. The error is the message for the key. Also used for
/// `[identity.headers]`, so both places accept the same names.
pub fn claim_path(claim: &str) -> Result<ClaimPath, String> {
    if claim.is_empty() {
        return Err("the claim name must not be empty".to_owned());
    }
    if claim.starts_with('/') {
        let mut chars = claim.chars();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(format!(
                    "{claim:?} is not a valid JSON Pointer: \"~\" must be followed by 0 or 1 (write ~0 for \"~\", ~1 for \"/\")"
                ));
            }
        }
    }
    Ok(ClaimPath::parse(claim))
}

/// A scope token (RFC 6749 §3.3): printable ASCII except space, `"` and `\`.
fn scope_token(scope: &str) -> Result<(), String> {
    let valid = !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{scope:?} is not a scope token (printable ASCII without spaces, '\"' or '\\')"
        ))
    }
}

fn scope_list(scopes: &[String], at: &str, problems: &mut Vec<Problem>) -> Box<[String]> {
    for (i, scope) in scopes.iter().enumerate() {
        if let Err(e) = scope_token(scope) {
            problems.push((format!("{at}[{i}]"), e));
        }
    }
    scopes.into()
}

fn rule_list(rules: &[raw::ClaimRule], at: &str, problems: &mut Vec<Problem>) -> Box<[Rule]> {
    rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| rule(r, &format!("{at}[{i}]"), problems))
        .collect()
}

/// One rule; `None` after its problems were recorded. Every problem of the rule is recorded,
/// not only the first.
fn rule(rule: &raw::ClaimRule, at: &str, problems: &mut Vec<Problem>) -> Option<Rule> {
    let before = problems.len();
    let claim = if rule.claim.is_empty() {
        problems.push((
            format!("{at}.claim"),
            "a claim rule needs a non-empty claim".to_owned(),
        ));
        None
    } else {
        claim_path(&rule.claim)
            .map_err(|e| problems.push((format!("{at}.claim"), e)))
            .ok()
    };
    let set: Vec<&str> = rule
        .operators()
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name)
        .collect();
    if set.len() != 1 {
        let named = if rule.claim.is_empty() {
            String::new()
        } else {
            format!(" for {:?}", rule.claim)
        };
        let found = if set.is_empty() {
            "none".to_owned()
        } else {
            set.join(" and ")
        };
        problems.push((
            at.to_owned(),
            format!("the claim rule{named} needs exactly one operator (equals, one_of, contains, contains_any, contains_all, matches or exists); found {found}"),
        ));
    }
    let lists = [
        ("one_of", &rule.one_of),
        ("contains_any", &rule.contains_any),
        ("contains_all", &rule.contains_all),
    ];
    for (name, list) in lists {
        if list.as_ref().is_some_and(Vec::is_empty) {
            problems.push((format!("{at}.{name}"), "must not be empty".to_owned()));
        }
    }
    // Every operator that is set is compiled (so each bad value is reported); the rule keeps the
    // one operator only when there is exactly one and nothing was wrong.
    let mut ops = Vec::with_capacity(1);
    let value = |name: &str, v: &toml::Value, problems: &mut Vec<Problem>| {
        json(v)
            .map_err(|e| problems.push((format!("{at}.{name}"), e.to_owned())))
            .ok()
    };
    if let Some(v) = &rule.equals {
        ops.extend(value("equals", v, problems).map(Op::Equals));
    }
    if let Some(list) = &rule.one_of {
        ops.extend(value_list("one_of", list, at, problems).map(Op::OneOf));
    }
    if let Some(v) = &rule.contains {
        ops.extend(value("contains", v, problems).map(Op::Contains));
    }
    if let Some(list) = &rule.contains_any {
        ops.extend(value_list("contains_any", list, at, problems).map(Op::ContainsAny));
    }
    if let Some(list) = &rule.contains_all {
        ops.extend(value_list("contains_all", list, at, problems).map(Op::ContainsAll));
    }
    if let Some(pattern) = &rule.matches {
        match whole_match(pattern) {
            Ok(re) => ops.push(Op::Matches(re)),
            Err(e) => problems.push((format!("{at}.matches"), e)),
        }
    }
    if let Some(exists) = rule.exists {
        ops.push(Op::Exists(exists));
    }
    match (claim, ops.pop()) {
        (Some(claim), Some(op)) if ops.is_empty() && problems.len() == before => {
            Some(Rule { claim, op })
        }
        _ => None,
    }
}

fn value_list(
    name: &str,
    list: &[toml::Value],
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<Box<[Value]>> {
    let before = problems.len();
    let values: Vec<Value> = list
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            json(v)
                .map_err(|e| problems.push((format!("{at}.{name}[{i}]"), e.to_owned())))
                .ok()
        })
        .collect();
    (problems.len() == before && !values.is_empty()).then(|| values.into())
}

const DATETIME: &str =
    "a TOML date-time has no JSON equivalent and would never equal a claim; quote it as a string";
const NON_FINITE: &str =
    "nan and inf have no JSON equivalent and would never equal a claim; use a finite number";

/// A TOML value as the JSON value a claim would have to equal.
fn json(v: &toml::Value) -> Result<Value, &'static str> {
    Ok(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::Number(Number::from_f64(*f).ok_or(NON_FINITE)?),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(_) => return Err(DATETIME),
        toml::Value::Array(items) => {
            Value::Array(items.iter().map(json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| Ok((k.clone(), json(v)?)))
                .collect::<Result<_, &'static str>>()?,
        ),
    })
}

/// `matches`: the pattern must match the whole claim, so it is compiled as `^(?:pattern)$`. The
/// pattern is first compiled alone so that an error message talks about what was written.
fn whole_match(pattern: &str) -> Result<Regex, String> {
    let invalid = |e: regex::Error| {
        let text = e.to_string();
        let detail = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .map_or_else(
                || text.split_whitespace().collect::<Vec<_>>().join(" "),
                str::to_owned,
            );
        format!("invalid regular expression {pattern:?}: {detail}")
    };
    Regex::new(pattern).map_err(invalid)?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(invalid)
}

// ---------------------------------------------------------------------------------------------
// Evaluating: nothing below allocates
// ---------------------------------------------------------------------------------------------

/// The claim a caller's scopes are read from, and its value: `scope` when present (not absent,
/// not `null`), else `scp` when present. Which values grant anything is `Granted::of`'s rule.
pub fn scope_claim(claims: &Claims) -> Option<(&'static str, &Value)> {
    scope_source(claims).map(|(source, value)| {
        let name = match source {
            ScopeSource::Scope => "scope",
            ScopeSource::Scp => "scp",
        };
        (name, value)
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScopeSource {
    Scope,
    Scp,
}

/// [`scope_claim`] with the claim as a tag (no name to compare on the request path).
#[inline]
fn scope_source(claims: &Claims) -> Option<(ScopeSource, &Value)> {
    match claims.get("scope") {
        None | Some(Value::Null) => claims.get("scp").map(|v| (ScopeSource::Scp, v)),
        Some(value) => Some((ScopeSource::Scope, value)),
    }
}

/// The caller's granted scopes, read once per evaluation: `scope` when present (not absent, not
/// `null`), else `scp`.
enum Granted<'c> {
    /// Space-separated (runs of ASCII whitespace), as in `scope`.
    Text(&'c str),
    /// An array, as `scp` often is; elements that are not strings grant nothing.
    List(&'c [Value]),
    /// Neither claim, or a present `scope` that is not a string.
    Nothing,
}

impl<'c> Granted<'c> {
    fn of(claims: &'c Claims) -> Self {
        match scope_source(claims) {
            Some((_, Value::String(s))) => Granted::Text(s),
            // `scope` is a string by definition (RFC 8693 §4.2, RFC 9068 §2.2.3.1); an array
            // there is malformed and grants nothing rather than falling back to `scp`.
            Some((ScopeSource::Scp, Value::Array(items))) => Granted::List(items),
            _ => Granted::Nothing,
        }
    }

    fn has(&self, scope: &str) -> bool {
        match self {
            Granted::Text(s) => s.split_ascii_whitespace().any(|t| t == scope),
            Granted::List(items) => items.iter().any(|v| v.as_str() == Some(scope)),
            Granted::Nothing => false,
        }
    }
}

impl Block {
    /// Whether every scope and rule of this block holds, each reported to `observer`.
    #[inline]
    fn holds<O: Observer>(
        &self,
        index: usize,
        granted: &Granted<'_>,
        claims: &Claims,
        observer: &mut O,
    ) -> bool {
        let block = Some(index);
        let mut holds = true;
        for scope in self.scopes.iter() {
            let ok = granted.has(scope);
            observer.check(Check::Scope {
                block,
                scope,
                holds: ok,
            });
            if !ok {
                holds = false;
                if !O::EVERY {
                    return false;
                }
            }
        }
        for rule in self.rules.iter() {
            let (value, ok) = rule.verdict(claims);
            observer.check(Check::Rule {
                block,
                rule,
                value,
                holds: ok,
            });
            if !ok {
                holds = false;
                if !O::EVERY {
                    return false;
                }
            }
        }
        holds
    }
}

impl Rule {
    /// The value the rule reads (absent and `null` are both `None`) and whether the rule holds.
    #[inline]
    fn verdict<'c>(&self, claims: &'c Claims) -> (Option<&'c Value>, bool) {
        let value = self.claim.lookup(claims).filter(|v| !v.is_null());
        let Some(value) = value else {
            // Absent or null fails every operator except `exists = false`.
            return (None, matches!(self.op, Op::Exists(false)));
        };
        let holds = match &self.op {
            Op::Exists(want) => *want,
            Op::Equals(expected) => json_eq(value, expected),
            Op::OneOf(options) => options.iter().any(|o| json_eq(value, o)),
            Op::Contains(wanted) => contains(value, wanted),
            Op::ContainsAny(wanted) => wanted.iter().any(|w| contains(value, w)),
            Op::ContainsAll(wanted) => wanted.iter().all(|w| contains(value, w)),
            Op::Matches(re) => value.as_str().is_some_and(|s| re.is_match(s)),
        };
        (Some(value), holds)
    }
}

impl std::fmt::Display for Rule {
    /// The rule as written in the configuration: `claim operator operand`, the claim as its
    /// name or JSON Pointer, the operand as JSON (a `matches` pattern without our anchors).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.claim {
            ClaimPath::Name(name) => f.write_str(name)?,
            ClaimPath::Pointer(tokens) => {
                for token in tokens {
                    write!(f, "/{}", token.replace('~', "~0").replace('/', "~1"))?;
                }
            }
        }
        let list = |values: &[Value]| Value::Array(values.to_vec());
        match &self.op {
            Op::Equals(v) => write!(f, " equals {v}"),
            Op::OneOf(v) => write!(f, " one_of {}", list(v)),
            Op::Contains(v) => write!(f, " contains {v}"),
            Op::ContainsAny(v) => write!(f, " contains_any {}", list(v)),
            Op::ContainsAll(v) => write!(f, " contains_all {}", list(v)),
            Op::Matches(re) => {
                let pattern = re.as_str();
                let pattern = pattern
                    .strip_prefix("^(?:")
                    .and_then(|p| p.strip_suffix(")$"))
                    .unwrap_or(pattern);
                write!(f, " matches {}", Value::String(pattern.to_owned()))
            }
            Op::Exists(b) => write!(f, " exists {b}"),
        }
    }
}

/// `contains`: the claim is an array (an element equals `wanted` as in `equals`), or a string
/// split on runs of ASCII whitespace (a part equals `wanted`, which must then be a string).
fn contains(claim: &Value, wanted: &Value) -> bool {
    match claim {
        Value::Array(items) => items.iter().any(|item| json_eq(item, wanted)),
        Value::String(s) => wanted
            .as_str()
            .is_some_and(|w| s.split_ascii_whitespace().any(|part| part == w)),
        _ => false,
    }
}

/// JSON equality for policies: types must agree (`true` ≠ `"true"`, `1` ≠ `"1"`), numbers compare
/// by value (`1` = `1.0`), arrays element by element in order, objects by keys regardless of order.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => number_eq(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => false,
    }
}

/// Numbers by value, exactly: two integers as integers (no `f64` rounding of large values), an
/// integer and a float only when the float is that very integer.
fn number_eq(a: &Number, b: &Number) -> bool {
    let int = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(a), int(b)) {
        (Some(x), Some(y)) => x == y,
        (Some(i), None) => b.as_f64().is_some_and(|f| float_is_int(f, i)),
        (None, Some(i)) => a.as_f64().is_some_and(|f| float_is_int(f, i)),
        (None, None) => a.as_f64().is_some_and(|x| b.as_f64() == Some(x)),
    }
}

/// Whether `f` is exactly the integer `i` (every `i` here fits in 65 bits).
fn float_is_int(f: f64, i: i128) -> bool {
    // 2^64 bounds every i64/u64, so a float beyond it equals none of them.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    f.fract() == 0.0 && f.abs() <= LIMIT && f as i128 == i
}

#[cfg(test)]
mod tests;
