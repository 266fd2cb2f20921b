//! The validated policy and the questions the issuer and the validator ask it.

use std::collections::{BTreeMap, BTreeSet};

use crate::constraints::{Constraints, ScopeRule};
use crate::error::{ActionError, RoleError, ScopeError};

/// A validated duty policy. Build one with [`Policy::from_toml`] or [`Policy::load`].
#[derive(Clone, Debug)]
pub struct Policy {
    pub(crate) default_audience: Option<String>,
    pub(crate) roles: BTreeMap<String, BTreeSet<String>>,
    /// Every scope some role grants, kept so that scope checks need not walk the roles.
    pub(crate) scopes: BTreeSet<String>,
    pub(crate) conflicts: Vec<Conflict>,
    pub(crate) audiences: Vec<Audience>,
    pub(crate) dual_control: Vec<DualControl>,
    pub(crate) scope_rules: Vec<ScopeRule>,
}

/// A static separation-of-duties rule: roles no subject may combine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub(crate) name: String,
    pub(crate) roles: BTreeSet<String>,
}

impl Conflict {
    /// The conflict's name, unique in the policy.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The roles it separates (at least two).
    pub fn roles(&self) -> &BTreeSet<String> {
        &self.roles
    }
}

/// A service that accepts tokens, and the scope each of its actions needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audience {
    pub(crate) id: String,
    pub(crate) resource: Option<String>,
    pub(crate) actions: BTreeMap<String, String>,
}

impl Audience {
    /// The id, which goes into a token's `aud` claim.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The absolute URI a token request may name as its RFC 8707 `resource`.
    pub fn resource(&self) -> Option<&str> {
        self.resource.as_deref()
    }

    /// Action name to the scope it needs.
    pub fn actions(&self) -> &BTreeMap<String, String> {
        &self.actions
    }

    /// The scope an action needs, if the audience defines the action.
    pub fn scope_for(&self, action: &str) -> Option<&str> {
        self.actions.get(action).map(String::as_str)
    }

    /// Whether some action of this audience needs the scope.
    pub fn uses_scope(&self, scope: &str) -> bool {
        self.actions.values().any(|needed| needed == scope)
    }
}

/// A dynamic separation-of-duties rule: on one object, each listed action by a different subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DualControl {
    pub(crate) audience: String,
    pub(crate) distinct: Vec<String>,
}

impl DualControl {
    /// The audience whose actions the rule constrains.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The actions that must each be done by a different subject, in policy order.
    pub fn distinct(&self) -> &[String] {
        &self.distinct
    }

    /// Whether the rule constrains the action.
    pub fn covers(&self, action: &str) -> bool {
        self.distinct.iter().any(|listed| listed == action)
    }
}

impl Policy {
    /// The scopes a role grants, or `None` for an unknown role.
    pub fn role_scopes(&self, role: &str) -> Option<&BTreeSet<String>> {
        self.roles.get(role)
    }

    /// Every role name, sorted.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }

    /// Whether the policy defines the role.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    /// The union of the scopes of the roles; roles the policy does not define add nothing, so a
    /// subject keeping a role that was since removed from the policy simply loses its scopes.
    pub fn scopes_of_roles<'a>(
        &self,
        roles: impl IntoIterator<Item = &'a str>,
    ) -> BTreeSet<String> {
        roles
            .into_iter()
            .filter_map(|role| self.roles.get(role))
            .flatten()
            .cloned()
            .collect()
    }

    /// Whether some role grants the scope.
    pub fn is_known_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// Every scope some role grants, sorted.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(String::as_str)
    }

    /// The conflicts, in policy order.
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    /// Static separation of duties at role assignment: may a subject holding `held` also be given
    /// `role`? Holding a role already held is fine; held roles the policy no longer defines are
    /// ignored, since they grant nothing.
    pub fn may_hold_role(&self, held: &BTreeSet<String>, role: &str) -> Result<(), RoleError> {
        if !self.has_role(role) {
            return Err(RoleError::UnknownRole(role.to_owned()));
        }
        if held.contains(role) {
            return Ok(());
        }
        for conflict in self.conflicts.iter().filter(|c| c.roles.contains(role)) {
            if let Some(other) = conflict.roles.iter().find(|r| held.contains(*r)) {
                return Err(RoleError::Conflict {
                    conflict: conflict.name.clone(),
                    role: role.to_owned(),
                    held: other.clone(),
                });
            }
        }
        Ok(())
    }

    /// Static separation of duties at minting: may one token carry all these scopes? Every scope
    /// must be known, and the set must span no conflict (see [`Policy::spans`]).
    pub fn check_token_scopes(&self, scopes: &BTreeSet<String>) -> Result<(), ScopeError> {
        if let Some(unknown) = scopes.iter().find(|s| !self.is_known_scope(s)) {
            return Err(ScopeError::UnknownScope(unknown.clone()));
        }
        for conflict in &self.conflicts {
            if let Some((first, second)) = self.spans(scopes, conflict) {
                return Err(ScopeError::Conflict {
                    conflict: conflict.name.clone(),
                    roles: (first.to_owned(), second.to_owned()),
                });
            }
        }
        Ok(())
    }

    /// Whether `scopes` span `conflict`, and if so two of its roles whose duties they combine.
    ///
    /// Let S be the scopes of `scopes` that some role of the conflict grants. The set spans the
    /// conflict when S is not empty and no single role of the conflict grants all of S: only then
    /// does the token need the duties of two separated roles. A scope that several roles of the
    /// conflict share (`payments:read`) therefore does not span it on its own.
    pub fn spans<'p>(
        &'p self,
        scopes: &BTreeSet<String>,
        conflict: &'p Conflict,
    ) -> Option<(&'p str, &'p str)> {
        let granted = |role: &String| self.roles.get(role).into_iter().flatten();
        let relevant: BTreeSet<&String> = conflict
            .roles
            .iter()
            .flat_map(granted)
            .filter(|scope| scopes.contains(*scope))
            .collect();
        if relevant.is_empty() {
            return None;
        }
        let covers = |role: &String, scope: &String| {
            self.roles
                .get(role)
                .is_some_and(|granted| granted.contains(scope))
        };
        if conflict
            .roles
            .iter()
            .any(|role| relevant.iter().all(|scope| covers(role, scope)))
        {
            return None;
        }
        // Both searches succeed: `first` misses some relevant scope (no role covers them all), and
        // every relevant scope is granted by some role of the conflict. Sorted sets make the pair
        // deterministic.
        let first = conflict
            .roles
            .iter()
            .find(|role| relevant.iter().any(|scope| covers(role, scope)))?;
        let missing = relevant.iter().find(|scope| !covers(first, scope))?;
        let second = conflict.roles.iter().find(|role| covers(role, missing))?;
        Some((first, second))
    }

    /// The audience with this id.
    pub fn audience(&self, id: &str) -> Option<&Audience> {
        self.audiences.iter().find(|audience| audience.id == id)
    }

    /// Every audience, in policy order.
    pub fn audiences(&self) -> &[Audience] {
        &self.audiences
    }

    /// The audience a token request's RFC 8707 `resource` selects: the one whose `resource` URI
    /// it is, or else the one whose id it is.
    pub fn audience_for_resource(&self, resource: &str) -> Option<&Audience> {
        self.audiences
            .iter()
            .find(|audience| audience.resource.as_deref() == Some(resource))
            .or_else(|| self.audience(resource))
    }

    /// The audience used when a token request names no resource.
    pub fn default_audience(&self) -> Option<&Audience> {
        self.default_audience
            .as_deref()
            .and_then(|id| self.audience(id))
    }

    /// The scope an action at an audience needs.
    pub fn scope_for_action(&self, audience: &str, action: &str) -> Result<&str, ActionError> {
        let found = self
            .audience(audience)
            .ok_or_else(|| ActionError::UnknownAudience(audience.to_owned()))?;
        found
            .scope_for(action)
            .ok_or_else(|| ActionError::UnknownAction {
                audience: audience.to_owned(),
                action: action.to_owned(),
            })
    }

    /// The audiences, in policy order, with at least one action needing one of the scopes: where a
    /// token carrying them can be used for anything.
    pub fn audiences_for_scopes(&self, scopes: &BTreeSet<String>) -> Vec<&Audience> {
        self.audiences
            .iter()
            .filter(|audience| scopes.iter().any(|scope| audience.uses_scope(scope)))
            .collect()
    }

    /// The dual-control rule for an audience, if it has one.
    pub fn dual_control(&self, audience: &str) -> Option<&DualControl> {
        self.dual_control
            .iter()
            .find(|rule| rule.audience == audience)
    }

    /// The merged `[scope.*]` rules that apply to a token carrying these scopes.
    pub fn constraints(&self, scopes: &BTreeSet<String>) -> Constraints {
        Constraints::merge(&self.scope_rules, scopes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Acr, ConstraintViolation, GrantType, SAMPLE};

    fn sample() -> Policy {
        Policy::from_toml("sample-policy.toml", SAMPLE).unwrap()
    }

    fn set(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn roles_and_their_scopes() {
        let policy = sample();
        assert_eq!(
            policy.roles().collect::<Vec<_>>(),
            [
                "admin",
                "approver",
                "clerk",
                "security-analyst",
                "treasurer"
            ]
        );
        assert!(policy.has_role("clerk"));
        assert!(!policy.has_role("superuser"));
        assert_eq!(
            policy.role_scopes("clerk"),
            Some(&set(&["payments:create", "payments:read"]))
        );
        assert_eq!(policy.role_scopes("superuser"), None);
        assert_eq!(
            policy.scopes_of_roles(["clerk", "treasurer", "gone"]),
            set(&["payments:create", "payments:execute", "payments:read"])
        );
        assert!(policy.scopes_of_roles([]).is_empty());
        assert!(policy.is_known_scope("admin:keys"));
        assert!(!policy.is_known_scope("admin:*"));
        assert_eq!(policy.scopes().count(), 9);
        assert_eq!(policy.conflicts().len(), 2);
        assert_eq!(policy.conflicts()[0].name(), "payments maker-checker");
        assert_eq!(
            policy.conflicts()[1].roles(),
            &set(&["admin", "security-analyst"])
        );
    }

    #[test]
    fn may_hold_role_enforces_conflicts() {
        let policy = sample();
        assert_eq!(policy.may_hold_role(&set(&[]), "clerk"), Ok(()));
        assert_eq!(policy.may_hold_role(&set(&["clerk"]), "clerk"), Ok(()));
        assert_eq!(
            policy.may_hold_role(&set(&["clerk", "security-analyst"]), "clerk"),
            Ok(())
        );
        assert_eq!(
            policy.may_hold_role(&set(&["security-analyst"]), "treasurer"),
            Ok(())
        );
        assert_eq!(
            policy.may_hold_role(&set(&["gone", "clerk"]), "security-analyst"),
            Ok(())
        );
        let err = policy
            .may_hold_role(&set(&["security-analyst", "treasurer"]), "clerk")
            .unwrap_err();
        assert_eq!(
            err,
            RoleError::Conflict {
                conflict: "payments maker-checker".into(),
                role: "clerk".into(),
                held: "treasurer".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            r#"role "clerk" conflicts with held role "treasurer" (conflict "payments maker-checker")"#
        );
        assert_eq!(
            policy.may_hold_role(&set(&[]), "root"),
            Err(RoleError::UnknownRole("root".into()))
        );
    }

    #[test]
    fn a_shared_scope_alone_spans_nothing() {
        let policy = sample();
        assert_eq!(policy.check_token_scopes(&set(&["payments:read"])), Ok(()));
        assert_eq!(
            policy.check_token_scopes(&set(&["payments:read", "payments:create"])),
            Ok(())
        );
        assert_eq!(
            policy.check_token_scopes(&set(&["payments:read", "payments:approve"])),
            Ok(())
        );
        assert_eq!(policy.check_token_scopes(&set(&[])), Ok(()));
    }

    #[test]
    fn scopes_of_two_conflicting_roles_are_refused() {
        let policy = sample();
        let err = policy
            .check_token_scopes(&set(&["payments:create", "payments:approve"]))
            .unwrap_err();
        assert_eq!(
            err,
            ScopeError::Conflict {
                conflict: "payments maker-checker".into(),
                roles: ("approver".into(), "clerk".into()),
            }
        );
        assert_eq!(
            err.to_string(),
            r#"scopes combine the duties of "approver" and "clerk", which conflict "payments maker-checker" separates"#
        );
        // A scope shared by two roles does not hide the conflict with a third.
        assert_eq!(
            policy.check_token_scopes(&set(&["payments:read", "payments:execute"])),
            Err(ScopeError::Conflict {
                conflict: "payments maker-checker".into(),
                roles: ("approver".into(), "treasurer".into()),
            })
        );
        assert_eq!(
            policy.check_token_scopes(&set(&["admin:keys", "audit:read"])),
            Err(ScopeError::Conflict {
                conflict: "administrators do not audit themselves".into(),
                roles: ("admin".into(), "security-analyst".into()),
            })
        );
    }

    #[test]
    fn scopes_of_roles_in_different_conflicts_combine() {
        let policy = sample();
        assert_eq!(
            policy.check_token_scopes(&set(&["payments:create", "payments:read", "audit:read"])),
            Ok(())
        );
        assert_eq!(
            policy.check_token_scopes(&set(&["admin:keys", "admin:roles", "payments:execute"])),
            Ok(())
        );
    }

    #[test]
    fn unknown_scopes_are_refused() {
        let policy = sample();
        assert_eq!(
            policy.check_token_scopes(&set(&["payments:read", "payments:refund"])),
            Err(ScopeError::UnknownScope("payments:refund".into()))
        );
        assert_eq!(
            policy.check_token_scopes(&set(&["admin:*"])),
            Err(ScopeError::UnknownScope("admin:*".into()))
        );
    }

    #[test]
    fn spans_picks_roles_in_sorted_order() {
        let policy = Policy::from_toml(
            "p.toml",
            r#"
            [roles]
            a = ["x", "y"]
            b = ["y", "z"]
            c = ["x", "z"]
            [[conflict]]
            name = "abc"
            roles = ["c", "b", "a"]
            "#,
        )
        .unwrap();
        let conflict = &policy.conflicts()[0];
        assert_eq!(policy.spans(&set(&["x", "y"]), conflict), None);
        assert_eq!(
            policy.spans(&set(&["x", "y", "z"]), conflict),
            Some(("a", "b"))
        );
        assert_eq!(policy.spans(&set(&["y", "z", "w"]), conflict), None);
        assert_eq!(policy.spans(&set(&["w"]), conflict), None);
    }

    #[test]
    fn audiences_by_id_resource_and_default() {
        let policy = sample();
        let payments = policy.audience("payments").unwrap();
        assert_eq!(payments.id(), "payments");
        assert_eq!(payments.resource(), Some("https://payments.example"));
        assert_eq!(payments.actions().len(), 4);
        assert_eq!(payments.scope_for("payment.read"), Some("payments:read"));
        assert_eq!(payments.scope_for("payment.refund"), None);
        assert!(payments.uses_scope("payments:execute"));
        assert!(!payments.uses_scope("audit:read"));
        assert_eq!(policy.audience("auditor").unwrap().resource(), None);
        assert_eq!(policy.audience("nobody"), None);
        assert_eq!(policy.audiences().len(), 3);

        assert_eq!(
            policy.audience_for_resource("https://payments.example"),
            Some(payments)
        );
        assert_eq!(
            policy.audience_for_resource("auditor").unwrap().id(),
            "auditor"
        );
        assert_eq!(policy.audience_for_resource("https://other.example"), None);
        assert_eq!(policy.default_audience(), Some(payments));

        let no_default = Policy::from_toml(
            "p.toml",
            "[roles]\nr = [\"s\"]\n[[audience]]\nid = \"a\"\nactions = { go = \"s\" }\n",
        )
        .unwrap();
        assert_eq!(no_default.default_audience(), None);
    }

    #[test]
    fn scope_for_action_names_what_is_missing() {
        let policy = sample();
        assert_eq!(
            policy.scope_for_action("payments", "payment.approve"),
            Ok("payments:approve")
        );
        let err = policy.scope_for_action("ledger", "read").unwrap_err();
        assert_eq!(err, ActionError::UnknownAudience("ledger".into()));
        assert_eq!(err.to_string(), r#"unknown audience "ledger""#);
        let err = policy
            .scope_for_action("auditor", "audit.erase")
            .unwrap_err();
        assert_eq!(
            err,
            ActionError::UnknownAction {
                audience: "auditor".into(),
                action: "audit.erase".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            r#"audience "auditor" has no action "audit.erase""#
        );
    }

    #[test]
    fn audiences_for_scopes_finds_where_a_token_is_useful() {
        let policy = sample();
        let ids = |scopes: &[&str]| {
            policy
                .audiences_for_scopes(&set(scopes))
                .into_iter()
                .map(Audience::id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&["payments:read"]), ["payments"]);
        assert_eq!(
            ids(&["audit:read", "payments:create"]),
            ["payments", "auditor"]
        );
        assert_eq!(ids(&["admin:keys"]), ["issuer-admin"]);
        assert!(ids(&[]).is_empty());
        assert!(ids(&["unknown"]).is_empty());
    }

    #[test]
    fn dual_control_by_audience() {
        let policy = sample();
        let rule = policy.dual_control("payments").unwrap();
        assert_eq!(rule.audience(), "payments");
        assert_eq!(
            rule.distinct(),
            ["payment.create", "payment.approve", "payment.execute"]
        );
        assert!(rule.covers("payment.approve"));
        assert!(!rule.covers("payment.read"));
        assert_eq!(policy.dual_control("auditor"), None);
    }

    #[test]
    fn sample_constraints_guard_admin_scopes() {
        let policy = sample();
        let admin = policy.constraints(&set(&["admin:clients", "admin:keys"]));
        assert_eq!(
            admin.grant_types,
            Some([GrantType::AuthorizationCode].into_iter().collect())
        );
        assert_eq!(admin.min_acr, Some(Acr::Mfa));
        assert_eq!(admin.max_ttl, Some(Duration::from_secs(300)));
        assert!(!admin.refresh);
        assert_eq!(
            admin.permits(GrantType::AuthorizationCode, Some(Acr::Mfa)),
            Ok(())
        );
        let err = admin
            .permits(GrantType::RefreshToken, Some(Acr::Mfa))
            .unwrap_err();
        assert!(
            matches!(err, ConstraintViolation::GrantType { ref scope, .. } if scope == "admin:clients")
        );
        assert_eq!(
            err.to_string(),
            r#"scope "admin:clients" may only be granted by authorization_code (rule "admin:*")"#
        );

        let payments = policy.constraints(&set(&["payments:read"]));
        assert_eq!(payments, Constraints::default());
        assert_eq!(payments.permits(GrantType::ClientCredentials, None), Ok(()));
    }
}
