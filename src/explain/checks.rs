//! Phase 6 described: every scope and claim check of the route's policy, with the value it read
//! and its verdict, `any_of` blocks included, as `policy::authorize_traced` reports them.

use super::report::CheckStep;
use crate::policy::{self, Check};

/// Each policy check, as `Policy::evaluate_traced` reports it.
pub(super) struct PolicyTrace(pub(super) Vec<CheckStep>);

impl policy::Observer for PolicyTrace {
    const EVERY: bool = true;

    fn check(&mut self, check: Check<'_, '_>) {
        self.0.push(match check {
            Check::Scope {
                block,
                scope,
                holds,
            } => CheckStep {
                kind: "scope",
                block,
                check: scope.to_owned(),
                claim: None,
                value: None,
                holds,
            },
            Check::Rule {
                block,
                rule,
                value,
                holds,
            } => {
                let text = rule.to_string();
                let claim = text.split(' ').next().map(str::to_owned);
                CheckStep {
                    kind: "claim",
                    block,
                    check: text,
                    claim,
                    value: value.cloned(),
                    holds,
                }
            }
            Check::Block { index, holds } => CheckStep {
                kind: "any_of",
                block: Some(index),
                check: format!("any_of[{index}]"),
                claim: None,
                value: None,
                holds,
            },
        });
    }
}
