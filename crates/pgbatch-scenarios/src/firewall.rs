//! Firewall rules (scenario C5): replacing a VPC's rules as one change.

use diesel::prelude::*;
use pgbatch::{Cause, Fragment};
use uuid::Uuid;

use crate::schema::{vpc, vpc_firewall_rule};

/// A firewall rule to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The rule's name, unique among the VPC's live rules.
    pub name: String,
    /// `allow` or `deny`.
    pub action: String,
}

/// Why the rules could not be replaced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirewallError {
    /// The VPC does not exist or was deleted.
    #[error("vpc {0} not found")]
    VpcNotFound(Uuid),
    /// Two of the new rules share a name.
    #[error("duplicate firewall rule name")]
    DuplicateRuleName,
}

/// Labels.
pub mod labels {
    /// The VPC exists; its firewall generation is bumped.
    pub const VPC_EXISTS: &str = "bump firewall generation";
    /// The insert of the new rules.
    pub const INSERT_RULES: &str = "insert rules";
}

/// Soft-deletes `vpc_id`'s current rules, bumps its firewall generation (the VPC must exist
/// and not be deleted), and inserts `rules`. An empty `rules` still soft-deletes.
pub fn replace_rules(vpc_id: Uuid, rules: &[Rule]) -> Fragment<FirewallError> {
    let mut fragment = Fragment::new();
    fragment
        .push(
            diesel::update(vpc_firewall_rule::table)
                .filter(vpc_firewall_rule::vpc_id.eq(vpc_id))
                .filter(vpc_firewall_rule::deleted_at.is_null())
                .set(vpc_firewall_rule::deleted_at.eq(diesel::dsl::now)),
        )
        .label("soft-delete current rules");
    fragment
        .push(
            diesel::update(vpc::table.find(vpc_id))
                .filter(vpc::deleted_at.is_null())
                .set(vpc::firewall_gen.eq(vpc::firewall_gen + 1)),
        )
        .label(labels::VPC_EXISTS)
        .expect_rows(1);
    if !rules.is_empty() {
        let rows: Vec<_> = rules
            .iter()
            .map(|rule| {
                (
                    vpc_firewall_rule::id.eq(Uuid::new_v4()),
                    vpc_firewall_rule::vpc_id.eq(vpc_id),
                    vpc_firewall_rule::name.eq(rule.name.clone()),
                    vpc_firewall_rule::action.eq(rule.action.clone()),
                )
            })
            .collect();
        fragment.push(diesel::insert_into(vpc_firewall_rule::table).values(rows)).label(labels::INSERT_RULES);
    }
    fragment.map_failure(move |failure| match failure.cause() {
        Cause::GuardFailed(guard) if guard.label() == Some(labels::VPC_EXISTS) => {
            Some(FirewallError::VpcNotFound(vpc_id))
        }
        Cause::UniqueViolation(v) if v.constraint() == Some("vpc_firewall_rule_name_unique") => {
            Some(FirewallError::DuplicateRuleName)
        }
        _ => None,
    })
}
