//! Errors: one for a policy file that cannot be used, and one per kind of policy decision.

use std::collections::BTreeSet;

use crate::{Acr, GrantType};

/// A policy file that is unreadable, not valid TOML, or breaks a rule of the policy format.
///
/// Displays as `file:line: reason`, or `file: reason` when no line applies (an unreadable file).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {reason}", .line.map(|line| format!(":{line}")).unwrap_or_default())]
pub struct PolicyError {
    /// The file name as given to the parser.
    pub file: String,
    /// The 1-based line where the problem is, when known.
    pub line: Option<usize>,
    /// What is wrong, lowercase.
    pub reason: String,
}

/// Why a subject may not be assigned a role (static separation of duties).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The policy defines no such role.
    #[error("unknown role {0:?}")]
    UnknownRole(String),
    /// The subject already holds a role that shares a conflict with the requested one.
    #[error("role {role:?} conflicts with held role {held:?} (conflict {conflict:?})")]
    Conflict {
        /// The conflict's name.
        conflict: String,
        /// The role asked for.
        role: String,
        /// A role the subject already holds that is in the same conflict.
        held: String,
    },
}

/// Why a set of scopes may not go into one token (static separation of duties).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// No role grants this scope.
    #[error("unknown scope {0:?}")]
    UnknownScope(String),
    /// The scopes combine the duties of two different roles of a conflict.
    #[error("scopes combine the duties of {:?} and {:?}, which conflict {conflict:?} separates", .roles.0, .roles.1)]
    Conflict {
        /// The conflict's name.
        conflict: String,
        /// Two roles of the conflict whose duties the scopes combine.
        roles: (String, String),
    },
}

/// Why an action at an audience has no scope.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// The policy defines no audience with this id.
    #[error("unknown audience {0:?}")]
    UnknownAudience(String),
    /// The audience exists but does not define the action.
    #[error("audience {audience:?} has no action {action:?}")]
    UnknownAction {
        /// The audience's id.
        audience: String,
        /// The action asked for.
        action: String,
    },
}

/// A `[scope."pattern"]` rule that a token request does not meet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintViolation {
    /// The grant type is not among those the rule allows.
    #[error("scope {scope:?} may only be granted by {} (rule {pattern:?})", join(.allowed))]
    GrantType {
        /// The requested scope the rule applies to.
        scope: String,
        /// The rule's pattern, as written in the policy.
        pattern: String,
        /// The grant type of the request.
        grant: GrantType,
        /// The grant types the rule allows.
        allowed: BTreeSet<GrantType>,
    },
    /// The authentication was weaker than the rule requires.
    #[error("scope {scope:?} needs acr {required} or stronger, got {} (rule {pattern:?})", .got.map_or("none", Acr::as_str))]
    AcrTooWeak {
        /// The requested scope the rule applies to.
        scope: String,
        /// The rule's pattern, as written in the policy.
        pattern: String,
        /// The weakest acr the rule accepts.
        required: Acr,
        /// The acr of the authentication, if any (a client credentials grant has none).
        got: Option<Acr>,
    },
}

fn join(grants: &BTreeSet<GrantType>) -> String {
    grants
        .iter()
        .map(|grant| grant.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// A string that names no grant type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown grant type {0:?}")]
pub struct UnknownGrantType(pub String);

/// A string that names no acr.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown acr {0:?}")]
pub struct UnknownAcr(pub String);
