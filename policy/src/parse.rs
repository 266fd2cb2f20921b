//! Reading a policy file: TOML into spanned raw structs, then validation into a [`Policy`].
//!
//! The raw structs keep every value's byte span so that a rule broken anywhere in the file is
//! reported at its line; a policy that is wrong must stop a service at start-up, not surprise it
//! at the first token request.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::constraints::{ScopePattern, ScopeRule, parse_duration};
use crate::error::PolicyError;
use crate::policy::{Audience, Conflict, DualControl, Policy};
use crate::{Acr, GrantType};

type Text = Spanned<String>;
type List = Spanned<Vec<Text>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default_audience: Option<Text>,
    #[serde(default)]
    roles: BTreeMap<Text, List>,
    #[serde(default)]
    conflict: Vec<RawConflict>,
    #[serde(default)]
    audience: Vec<RawAudience>,
    #[serde(default)]
    dual_control: Vec<RawDualControl>,
    #[serde(default)]
    scope: BTreeMap<Text, RawScopeRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConflict {
    name: Text,
    roles: List,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudience {
    id: Text,
    resource: Option<Text>,
    actions: Spanned<BTreeMap<Text, Text>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDualControl {
    audience: Text,
    distinct: List,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScopeRule {
    grant_types: Option<List>,
    min_acr: Option<Text>,
    max_ttl: Option<Text>,
    refresh: Option<bool>,
}

impl Policy {
    /// Parses and validates a policy. `file` names the source in errors only.
    pub fn from_toml(file: &str, text: &str) -> Result<Policy, PolicyError> {
        let source = Source { file, text };
        let raw: RawPolicy = toml::from_str(text).map_err(|err| source.toml_error(&err))?;
        source.validate(raw)
    }

    /// Reads and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| PolicyError {
            file: file.clone(),
            line: None,
            reason: format!("cannot read the policy: {err}"),
        })?;
        Policy::from_toml(&file, &text)
    }
}

/// The file being validated, to turn byte spans into errors with line numbers.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn line(&self, offset: usize) -> usize {
        let before = &self.text.as_bytes()[..offset.min(self.text.len())];
        before.iter().filter(|&&byte| byte == b'\n').count() + 1
    }

    fn error(&self, span: Range<usize>, reason: String) -> PolicyError {
        PolicyError {
            file: self.file.to_owned(),
            line: Some(self.line(span.start)),
            reason,
        }
    }

    fn toml_error(&self, err: &toml::de::Error) -> PolicyError {
        PolicyError {
            file: self.file.to_owned(),
            line: err.span().map(|span| self.line(span.start)),
            reason: err.message().trim_end().trim_end_matches('.').to_owned(),
        }
    }

    fn validate(&self, raw: RawPolicy) -> Result<Policy, PolicyError> {
        let roles = self.roles(&raw.roles)?;
        let scopes = roles.values().flatten().cloned().collect();
        let mut policy = Policy {
            default_audience: None,
            roles,
            scopes,
            conflicts: Vec::new(),
            audiences: Vec::new(),
            dual_control: Vec::new(),
            scope_rules: Vec::new(),
        };
        policy.conflicts = self.conflicts(&raw.conflict, &policy)?;
        self.roles_span_no_foreign_conflict(&raw.roles, &policy)?;
        policy.audiences = self.audiences(&raw.audience, &policy)?;
        if let Some(default) = &raw.default_audience {
            if policy.audience(default.get_ref()).is_none() {
                return Err(self.error(
                    default.span(),
                    format!(
                        "default_audience names unknown audience {:?}",
                        default.get_ref()
                    ),
                ));
            }
            policy.default_audience = Some(default.get_ref().clone());
        }
        policy.dual_control = self.dual_control(&raw.dual_control, &policy)?;
        policy.scope_rules = self.scope_rules(&raw.scope, &policy)?;
        Ok(policy)
    }

    fn roles(
        &self,
        raw: &BTreeMap<Text, List>,
    ) -> Result<BTreeMap<String, BTreeSet<String>>, PolicyError> {
        let mut roles = BTreeMap::new();
        for (name, scopes) in in_file_order(raw) {
            let role = name.get_ref();
            if !is_role_name(role) {
                return Err(self.error(
                    name.span(),
                    format!("malformed role name {role:?}: use a-z, 0-9, '_' and '-'"),
                ));
            }
            if scopes.get_ref().is_empty() {
                return Err(self.error(scopes.span(), format!("role {role:?} has no scopes")));
            }
            let mut granted = BTreeSet::new();
            for scope in scopes.get_ref() {
                if !is_scope_name(scope.get_ref()) {
                    return Err(self.error(
                        scope.span(),
                        format!(
                            "role {role:?} has malformed scope {:?}: use a-z, 0-9, '.', '_', ':' and '-'",
                            scope.get_ref()
                        ),
                    ));
                }
                if !granted.insert(scope.get_ref().clone()) {
                    return Err(self.error(
                        scope.span(),
                        format!("role {role:?} lists scope {:?} twice", scope.get_ref()),
                    ));
                }
            }
            roles.insert(role.clone(), granted);
        }
        Ok(roles)
    }

    fn conflicts(
        &self,
        raw: &[RawConflict],
        policy: &Policy,
    ) -> Result<Vec<Conflict>, PolicyError> {
        let mut conflicts: Vec<Conflict> = Vec::new();
        for entry in raw {
            let name = entry.name.get_ref();
            if name.trim().is_empty() {
                return Err(self.error(entry.name.span(), "conflict has an empty name".into()));
            }
            if conflicts.iter().any(|earlier| &earlier.name == name) {
                return Err(self.error(
                    entry.name.span(),
                    format!("two conflicts are named {name:?}"),
                ));
            }
            if entry.roles.get_ref().len() < 2 {
                return Err(self.error(
                    entry.roles.span(),
                    format!("conflict {name:?} needs at least two roles"),
                ));
            }
            let mut roles = BTreeSet::new();
            for role in entry.roles.get_ref() {
                if !policy.has_role(role.get_ref()) {
                    return Err(self.error(
                        role.span(),
                        format!("conflict {name:?} names unknown role {:?}", role.get_ref()),
                    ));
                }
                if !roles.insert(role.get_ref().clone()) {
                    return Err(self.error(
                        role.span(),
                        format!("conflict {name:?} lists role {:?} twice", role.get_ref()),
                    ));
                }
            }
            conflicts.push(Conflict {
                name: name.clone(),
                roles,
            });
        }
        // A conflict whose roles another conflict already separates adds nothing, and is most
        // likely a leftover from an edit; reject it rather than keep two sources of truth.
        for (index, (conflict, entry)) in conflicts.iter().zip(raw).enumerate() {
            for (other_index, other) in conflicts.iter().enumerate() {
                if other_index == index || !conflict.roles.is_subset(&other.roles) {
                    continue;
                }
                if conflict.roles == other.roles && other_index < index {
                    return Err(self.error(
                        entry.roles.span(),
                        format!(
                            "conflict {:?} has the same roles as conflict {:?}",
                            conflict.name, other.name
                        ),
                    ));
                }
                if conflict.roles != other.roles {
                    return Err(self.error(
                        entry.roles.span(),
                        format!(
                            "conflict {:?} is redundant: all its roles are in conflict {:?}",
                            conflict.name, other.name
                        ),
                    ));
                }
            }
        }
        Ok(conflicts)
    }

    /// A role outside a conflict whose scopes alone span it would let one subject, and one token,
    /// do what the conflict separates.
    fn roles_span_no_foreign_conflict(
        &self,
        raw: &BTreeMap<Text, List>,
        policy: &Policy,
    ) -> Result<(), PolicyError> {
        for (name, _) in in_file_order(raw) {
            let role = name.get_ref();
            let Some(scopes) = policy.role_scopes(role) else {
                continue;
            };
            for conflict in policy.conflicts() {
                if conflict.roles().contains(role) {
                    continue;
                }
                if let Some((first, second)) = policy.spans(scopes, conflict) {
                    return Err(self.error(
                        name.span(),
                        format!(
                            "role {role:?} alone spans conflict {:?}: its scopes combine the duties of {first:?} and {second:?}",
                            conflict.name()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn audiences(
        &self,
        raw: &[RawAudience],
        policy: &Policy,
    ) -> Result<Vec<Audience>, PolicyError> {
        let mut audiences: Vec<Audience> = Vec::new();
        for entry in raw {
            let id = entry.id.get_ref();
            if id.trim().is_empty() {
                return Err(self.error(entry.id.span(), "audience has an empty id".into()));
            }
            if audiences.iter().any(|earlier| &earlier.id == id) {
                return Err(self.error(entry.id.span(), format!("two audiences have id {id:?}")));
            }
            if let Some(resource) = &entry.resource {
                let uri = resource.get_ref();
                if !is_absolute_uri(uri) {
                    return Err(self.error(
                        resource.span(),
                        format!(
                            "audience {id:?} has resource {uri:?}, which is not an absolute URI without a fragment"
                        ),
                    ));
                }
                if let Some(earlier) = audiences
                    .iter()
                    .find(|earlier| earlier.resource.as_ref() == Some(uri))
                {
                    return Err(self.error(
                        resource.span(),
                        format!(
                            "audiences {:?} and {id:?} have the same resource {uri:?}",
                            earlier.id
                        ),
                    ));
                }
            }
            if entry.actions.get_ref().is_empty() {
                return Err(self.error(
                    entry.actions.span(),
                    format!("audience {id:?} has no actions"),
                ));
            }
            let mut actions = BTreeMap::new();
            for (action, scope) in entry.actions.get_ref() {
                if action.get_ref().trim().is_empty() {
                    return Err(self.error(
                        action.span(),
                        format!("audience {id:?} has an action with an empty name"),
                    ));
                }
                if !policy.is_known_scope(scope.get_ref()) {
                    return Err(self.error(
                        scope.span(),
                        format!(
                            "audience {id:?}: action {:?} needs scope {:?}, which no role grants",
                            action.get_ref(),
                            scope.get_ref()
                        ),
                    ));
                }
                actions.insert(action.get_ref().clone(), scope.get_ref().clone());
            }
            audiences.push(Audience {
                id: id.clone(),
                resource: entry.resource.as_ref().map(|r| r.get_ref().clone()),
                actions,
            });
        }
        Ok(audiences)
    }

    fn dual_control(
        &self,
        raw: &[RawDualControl],
        policy: &Policy,
    ) -> Result<Vec<DualControl>, PolicyError> {
        let mut rules: Vec<DualControl> = Vec::new();
        for entry in raw {
            let id = entry.audience.get_ref();
            let Some(audience) = policy.audience(id) else {
                return Err(self.error(
                    entry.audience.span(),
                    format!("dual_control names unknown audience {id:?}"),
                ));
            };
            if rules.iter().any(|earlier| &earlier.audience == id) {
                return Err(self.error(
                    entry.audience.span(),
                    format!("two dual_control rules for audience {id:?}"),
                ));
            }
            if entry.distinct.get_ref().len() < 2 {
                return Err(self.error(
                    entry.distinct.span(),
                    format!("dual_control for audience {id:?} needs at least two actions"),
                ));
            }
            let mut distinct: Vec<String> = Vec::new();
            for action in entry.distinct.get_ref() {
                let name = action.get_ref();
                if audience.scope_for(name).is_none() {
                    return Err(self.error(
                        action.span(),
                        format!("dual_control names action {name:?}, which audience {id:?} does not define"),
                    ));
                }
                if distinct.contains(name) {
                    return Err(self.error(
                        action.span(),
                        format!("dual_control for audience {id:?} lists action {name:?} twice"),
                    ));
                }
                distinct.push(name.clone());
            }
            rules.push(DualControl {
                audience: id.clone(),
                distinct,
            });
        }
        Ok(rules)
    }

    fn scope_rules(
        &self,
        raw: &BTreeMap<Text, RawScopeRule>,
        policy: &Policy,
    ) -> Result<Vec<ScopeRule>, PolicyError> {
        let mut rules = Vec::new();
        for (key, entry) in in_file_order(raw) {
            let source = key.get_ref();
            let section = format!("[scope.{source:?}]");
            let pattern = ScopePattern::parse(source);
            let well_formed = match &pattern {
                ScopePattern::Exact(scope) => policy.is_known_scope(scope),
                ScopePattern::Prefix(prefix) => {
                    (prefix.is_empty() || is_scope_name(prefix))
                        && policy.scopes().any(|s| pattern.matches(s))
                }
            };
            if !well_formed {
                return Err(self.error(
                    key.span(),
                    format!(
                        "{section} matches no scope any role grants: use a known scope or a \"prefix*\" wildcard"
                    ),
                ));
            }
            let grant_types = match &entry.grant_types {
                None => None,
                Some(list) => Some(self.grant_types(&section, list)?),
            };
            let min_acr = match &entry.min_acr {
                None => None,
                Some(acr) => Some(acr.get_ref().parse::<Acr>().map_err(|_| {
                    self.error(
                        acr.span(),
                        format!(
                            "{section} has unknown min_acr {:?} (known, weakest first: {})",
                            acr.get_ref(),
                            names(Acr::ALL.map(Acr::as_str))
                        ),
                    )
                })?),
            };
            let max_ttl = match &entry.max_ttl {
                None => None,
                Some(ttl) => Some(parse_duration(ttl.get_ref()).ok_or_else(|| {
                    self.error(
                        ttl.span(),
                        format!(
                            "{section} has max_ttl {:?}, which is not a positive duration like 30s, 5m, 1h or 1d",
                            ttl.get_ref()
                        ),
                    )
                })?),
            };
            rules.push(ScopeRule {
                source: source.clone(),
                pattern,
                grant_types,
                min_acr,
                max_ttl,
                refresh: entry.refresh,
            });
        }
        Ok(rules)
    }

    fn grant_types(&self, section: &str, list: &List) -> Result<BTreeSet<GrantType>, PolicyError> {
        if list.get_ref().is_empty() {
            return Err(self.error(
                list.span(),
                format!("{section} has an empty grant_types: leave it out to allow any"),
            ));
        }
        let mut grants = BTreeSet::new();
        for item in list.get_ref() {
            let grant = item.get_ref().parse::<GrantType>().map_err(|_| {
                self.error(
                    item.span(),
                    format!(
                        "{section} has unknown grant type {:?} (known: {})",
                        item.get_ref(),
                        names(GrantType::ALL.map(GrantType::as_str))
                    ),
                )
            })?;
            if !grants.insert(grant) {
                return Err(self.error(
                    item.span(),
                    format!("{section} lists grant type {:?} twice", item.get_ref()),
                ));
            }
        }
        Ok(grants)
    }
}

/// Map entries sorted by where their key appears, so that the first problem reported is the first
/// in the file rather than the first alphabetically.
fn in_file_order<V>(map: &BTreeMap<Text, V>) -> Vec<(&Text, &V)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

fn names<const N: usize>(list: [&str; N]) -> String {
    list.join(", ")
}

fn is_role_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_scope_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b':' | b'-')
        })
}

/// A deliberately small check: an RFC 3986 scheme, a colon, something after it, no whitespace,
/// and no fragment (RFC 8707 forbids one in `resource`).
fn is_absolute_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let mut scheme_chars = scheme.chars();
    scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !uri.contains('#')
        && !uri.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;
    use crate::SAMPLE;

    /// A small valid policy; tests append to it or replace a line, so its line numbers matter.
    const BASE: [&str; 10] = [
        r#"[roles]"#,                                                                // 1
        r#"clerk    = ["payments:read", "payments:create"]"#,                        // 2
        r#"approver = ["payments:read", "payments:approve"]"#,                       // 3
        r#"auditor  = ["audit:read"]"#,                                              // 4
        r#"[[conflict]]"#,                                                           // 5
        r#"name  = "maker-checker""#,                                                // 6
        r#"roles = ["clerk", "approver"]"#,                                          // 7
        r#"[[audience]]"#,                                                           // 8
        r#"id      = "payments""#,                                                   // 9
        r#"actions = { create = "payments:create", approve = "payments:approve" }"#, // 10
    ];

    fn base_with(extra: &[&str]) -> String {
        BASE.iter()
            .chain(extra)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn base_replacing(line: usize, text: &str) -> String {
        let mut lines = BASE.to_vec();
        lines[line - 1] = text;
        lines.join("\n")
    }

    #[track_caller]
    fn assert_rejected(text: &str, line: usize, reason: &str) {
        let err = Policy::from_toml("p.toml", text).unwrap_err();
        assert_eq!(err.file, "p.toml");
        assert_eq!(err.line, Some(line), "{err}");
        assert!(err.reason.contains(reason), "{err}");
    }

    #[test]
    fn the_sample_and_the_base_parse() {
        let sample = Policy::from_toml("sample-policy.toml", SAMPLE).unwrap();
        assert_eq!(sample.roles().count(), 5);
        assert_eq!(sample.conflicts().len(), 2);
        assert_eq!(sample.audiences().len(), 3);
        assert_eq!(sample.default_audience().unwrap().id(), "payments");
        assert!(sample.dual_control("payments").is_some());
        Policy::from_toml("p.toml", &base_with(&[])).unwrap();
    }

    #[test]
    fn an_empty_policy_is_valid_and_grants_nothing() {
        let policy = Policy::from_toml("p.toml", "").unwrap();
        assert_eq!(policy.roles().count(), 0);
        assert_eq!(policy.default_audience(), None);
    }

    #[test]
    fn errors_display_file_line_and_reason() {
        let err = Policy::from_toml(
            "policy.toml",
            &base_replacing(7, r#"roles = ["clerk", "y"]"#),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"policy.toml:7: conflict "maker-checker" names unknown role "y""#
        );
        let no_line = PolicyError {
            file: "policy.toml".into(),
            line: None,
            reason: "cannot read the policy: gone".into(),
        };
        assert_eq!(
            no_line.to_string(),
            "policy.toml: cannot read the policy: gone"
        );
    }

    #[test]
    fn load_reads_a_file_and_reports_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("trias-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        std::fs::write(&path, SAMPLE).unwrap();
        let policy = Policy::load(&path).unwrap();
        assert!(policy.has_role("treasurer"));

        std::fs::write(&path, "[roles]\nclerk = []\n").unwrap();
        let err = Policy::load(&path).unwrap_err();
        assert_eq!(err.file, path.display().to_string());
        assert_eq!(err.line, Some(2));

        let missing = dir.join("missing.toml");
        let err = Policy::load(&missing).unwrap_err();
        assert_eq!(err.line, None);
        assert!(err.reason.starts_with("cannot read the policy: "), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn toml_syntax_errors_name_their_line() {
        assert_rejected("[roles\nclerk = [\"a\"]\n", 1, "");
        assert_rejected(&base_with(&["", "default_audience = "]), 12, "");
        assert_rejected(
            &base_replacing(3, "approver = [\"a\" \"b\"]"),
            3,
            "missing comma",
        );
    }

    #[test]
    fn unknown_keys_are_rejected_everywhere() {
        assert_rejected("colour = \"red\"\n", 1, "unknown field `colour`");
        assert_rejected(&base_with(&["owner = \"me\""]), 11, "unknown field `owner`");
        assert_rejected(
            &base_replacing(6, "title = \"x\""),
            6,
            "unknown field `title`",
        );
        assert_rejected(
            &base_with(&[
                "[[dual_control]]",
                "audience = \"payments\"",
                "distinct = [\"create\", \"approve\"]",
                "mode = \"strict\"",
            ]),
            14,
            "unknown field `mode`",
        );
        assert_rejected(
            &base_with(&["[scope.\"audit:read\"]", "ttl = \"5m\""]),
            12,
            "unknown field `ttl`",
        );
    }

    #[test]
    fn wrong_types_and_missing_fields_are_rejected() {
        assert_rejected(
            &base_replacing(4, "auditor = \"audit:read\""),
            4,
            "invalid type",
        );
        assert_rejected(&base_replacing(7, "roles = \"clerk\""), 7, "invalid type");
        assert_rejected(
            &base_replacing(10, "actions = { create = 1 }"),
            10,
            "invalid type",
        );
        assert_rejected(
            &base_with(&["[scope.\"audit:read\"]", "refresh = \"no\""]),
            12,
            "invalid type",
        );
        assert_rejected(&base_replacing(7, ""), 5, "missing field `roles`");
    }

    #[test]
    fn roles_need_well_formed_distinct_scopes() {
        assert_rejected(
            &base_replacing(4, "auditor = []"),
            4,
            r#"role "auditor" has no scopes"#,
        );
        assert_rejected(
            &base_replacing(4, r#"auditor = ["audit:read", "audit:read"]"#),
            4,
            r#"role "auditor" lists scope "audit:read" twice"#,
        );
        for bad in ["Audit:read", "audit:*", "", "audit read", "audit/read"] {
            assert_rejected(
                &base_replacing(4, &format!("auditor = [\"{bad}\"]")),
                4,
                &format!("role \"auditor\" has malformed scope {bad:?}"),
            );
        }
        for bad in ["Auditor", "\"audit.or\"", "\"\"", "\"a:b\""] {
            assert_rejected(
                &base_replacing(4, &format!("{bad} = [\"audit:read\"]")),
                4,
                "malformed role name",
            );
        }
        Policy::from_toml("p.toml", "[roles]\nrole_2-b = [\"a.b_c:d-0\"]\n").unwrap();
    }

    #[test]
    fn role_errors_come_in_file_order() {
        // `zeta` sorts after `alpha` but comes first in the file, so it is the one reported.
        assert_rejected("[roles]\nzeta = []\nalpha = []\n", 2, r#"role "zeta""#);
    }

    #[test]
    fn conflicts_need_two_distinct_known_roles_and_a_unique_name() {
        assert_rejected(
            &base_replacing(7, r#"roles = ["clerk"]"#),
            7,
            r#"conflict "maker-checker" needs at least two roles"#,
        );
        assert_rejected(
            &base_replacing(7, r#"roles = ["clerk", "clerk"]"#),
            7,
            r#"conflict "maker-checker" lists role "clerk" twice"#,
        );
        assert_rejected(
            &base_replacing(7, "roles = [\"clerk\",\n  \"approver\", \"boss\"]"),
            8,
            r#"conflict "maker-checker" names unknown role "boss""#,
        );
        assert_rejected(
            &base_replacing(6, r#"name = " ""#),
            6,
            "conflict has an empty name",
        );
        assert_rejected(
            &base_with(&[
                "[[conflict]]",
                r#"name = "maker-checker""#,
                r#"roles = ["clerk", "auditor"]"#,
            ]),
            12,
            r#"two conflicts are named "maker-checker""#,
        );
    }

    #[test]
    fn redundant_conflicts_are_rejected() {
        assert_rejected(
            &base_with(&[
                "[[conflict]]",
                r#"name = "again""#,
                r#"roles = ["approver", "clerk"]"#,
            ]),
            13,
            r#"conflict "again" has the same roles as conflict "maker-checker""#,
        );
        // The contained conflict is the redundant one, even when it comes first.
        assert_rejected(
            &base_with(&[
                "[[conflict]]",
                r#"name = "wider""#,
                r#"roles = ["approver", "clerk", "auditor"]"#,
            ]),
            7,
            r#"conflict "maker-checker" is redundant: all its roles are in conflict "wider""#,
        );
        // Overlapping without containment is a real, separate rule.
        Policy::from_toml(
            "p.toml",
            &base_with(&[
                "[[conflict]]",
                r#"name = "audit""#,
                r#"roles = ["approver", "auditor"]"#,
            ]),
        )
        .unwrap();
    }

    #[test]
    fn a_role_may_not_alone_span_a_conflict_it_is_not_in() {
        let text = [
            "[roles]",
            r#"clerk     = ["payments:read", "payments:create"]"#,
            r#"approver  = ["payments:read", "payments:approve"]"#,
            r#"superuser = ["payments:create", "payments:approve"]"#,
            "[[conflict]]",
            r#"name = "maker-checker""#,
            r#"roles = ["clerk", "approver"]"#,
        ]
        .join("\n");
        assert_rejected(
            &text,
            4,
            r#"role "superuser" alone spans conflict "maker-checker": its scopes combine the duties of "approver" and "clerk""#,
        );
        // A role outside the conflict holding one side's duty, or a shared one, is fine.
        let fine = text.replace(
            r#"["payments:create", "payments:approve"]"#,
            r#"["payments:read", "payments:create"]"#,
        );
        Policy::from_toml("p.toml", &fine).unwrap();
    }

    #[test]
    fn audiences_need_a_unique_id_actions_and_granted_scopes() {
        assert_rejected(
            &base_replacing(9, r#"id = """#),
            9,
            "audience has an empty id",
        );
        assert_rejected(
            &base_with(&[
                "[[audience]]",
                r#"id = "payments""#,
                r#"actions = { read = "payments:read" }"#,
            ]),
            12,
            r#"two audiences have id "payments""#,
        );
        assert_rejected(
            &base_replacing(10, "actions = {}"),
            10,
            r#"audience "payments" has no actions"#,
        );
        assert_rejected(
            &base_replacing(
                10,
                "actions = { create = \"payments:create\",\n  refund = \"payments:refund\" }",
            ),
            11,
            r#"audience "payments": action "refund" needs scope "payments:refund", which no role grants"#,
        );
        assert_rejected(
            &base_replacing(10, r#"actions = { "" = "payments:create" }"#),
            10,
            "action with an empty name",
        );
    }

    #[test]
    fn audience_resources_are_unique_absolute_uris() {
        for good in [
            "https://payments.example",
            "urn:trias:payments",
            "x-a+b.c:d",
        ] {
            Policy::from_toml("p.toml", &base_with(&[&format!("resource = \"{good}\"")])).unwrap();
        }
        for bad in [
            "payments.example",
            "://payments",
            "1http://x",
            "https:",
            "https://x/#top",
            "https://x y",
            "",
        ] {
            assert_rejected(
                &base_with(&[&format!("resource = \"{bad}\"")]),
                11,
                "which is not an absolute URI",
            );
        }
        assert_rejected(
            &base_with(&[
                r#"resource = "https://payments.example""#,
                "[[audience]]",
                r#"id = "audit""#,
                r#"resource = "https://payments.example""#,
                r#"actions = { read = "audit:read" }"#,
            ]),
            14,
            r#"audiences "payments" and "audit" have the same resource "https://payments.example""#,
        );
    }

    #[test]
    fn default_audience_must_exist() {
        let text = format!("default_audience = \"ledger\"\n{}", base_with(&[]));
        assert_rejected(
            &text,
            1,
            r#"default_audience names unknown audience "ledger""#,
        );
        let text = format!("default_audience = \"payments\"\n{}", base_with(&[]));
        let policy = Policy::from_toml("p.toml", &text).unwrap();
        assert_eq!(policy.default_audience().unwrap().id(), "payments");
    }

    fn dual(audience: &str, distinct: &str) -> Vec<String> {
        vec![
            "[[dual_control]]".into(),
            format!("audience = \"{audience}\""),
            format!("distinct = {distinct}"),
        ]
    }

    fn base_with_owned(extra: &[String]) -> String {
        base_with(&extra.iter().map(String::as_str).collect::<Vec<_>>())
    }

    #[test]
    fn dual_control_rules_are_checked() {
        Policy::from_toml(
            "p.toml",
            &base_with_owned(&dual("payments", r#"["create", "approve"]"#)),
        )
        .unwrap();
        assert_rejected(
            &base_with_owned(&dual("ledger", r#"["create", "approve"]"#)),
            12,
            r#"dual_control names unknown audience "ledger""#,
        );
        assert_rejected(
            &base_with_owned(&dual("payments", r#"["create", "refund"]"#)),
            13,
            r#"dual_control names action "refund", which audience "payments" does not define"#,
        );
        assert_rejected(
            &base_with_owned(&dual("payments", r#"["create"]"#)),
            13,
            r#"dual_control for audience "payments" needs at least two actions"#,
        );
        assert_rejected(
            &base_with_owned(&dual("payments", r#"["create", "approve", "create"]"#)),
            13,
            r#"dual_control for audience "payments" lists action "create" twice"#,
        );
        let mut twice = dual("payments", r#"["create", "approve"]"#);
        twice.extend(dual("payments", r#"["approve", "create"]"#));
        assert_rejected(
            &base_with_owned(&twice),
            15,
            r#"two dual_control rules for audience "payments""#,
        );
    }

    #[test]
    fn scope_rule_patterns_must_match_a_known_scope() {
        for good in ["payments:read", "payments:*", "pay*", "*"] {
            let text = base_with(&["", &format!("[scope.\"{good}\"]"), "refresh = false"]);
            Policy::from_toml("p.toml", &text).unwrap();
        }
        for bad in [
            "payments:refund",
            "admin:*",
            "payments:*:x",
            "pay*ments",
            "Payments:*",
            "**",
        ] {
            assert_rejected(
                &base_with(&["", &format!("[scope.\"{bad}\"]"), "refresh = false"]),
                12,
                &format!("[scope.{bad:?}] matches no scope any role grants"),
            );
        }
    }

    #[test]
    fn scope_rule_values_are_checked() {
        let rule = |line: &str| base_with(&["[scope.\"payments:*\"]", line]);
        assert_rejected(
            &rule("grant_types = []"),
            12,
            r#"[scope."payments:*"] has an empty grant_types"#,
        );
        assert_rejected(
            &rule(r#"grant_types = ["authorization_code", "password"]"#),
            12,
            r#"[scope."payments:*"] has unknown grant type "password""#,
        );
        assert_rejected(
            &rule(r#"grant_types = ["refresh_token", "refresh_token"]"#),
            12,
            r#"lists grant type "refresh_token" twice"#,
        );
        assert_rejected(
            &rule(r#"min_acr = "otp""#),
            12,
            r#"[scope."payments:*"] has unknown min_acr "otp""#,
        );
        for bad in ["0s", "5", "five minutes", "-1m", "1w"] {
            assert_rejected(
                &rule(&format!("max_ttl = \"{bad}\"")),
                12,
                &format!(
                    "[scope.\"payments:*\"] has max_ttl {bad:?}, which is not a positive duration"
                ),
            );
        }
        let policy = Policy::from_toml(
            "p.toml",
            &base_with(&[
                "[scope.\"payments:*\"]",
                r#"grant_types = ["client_credentials", "authorization_code"]"#,
                r#"min_acr = "pwd""#,
                r#"max_ttl = "1h""#,
                "[scope.\"payments:approve\"]",
                r#"grant_types = ["authorization_code", "refresh_token"]"#,
                r#"min_acr = "mfa""#,
                r#"max_ttl = "90s""#,
                "refresh = false",
            ]),
        )
        .unwrap();
        let scopes = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        let approve = policy.constraints(&scopes(&["payments:read", "payments:approve"]));
        assert_eq!(
            approve.grant_types,
            Some([GrantType::AuthorizationCode].into_iter().collect())
        );
        assert_eq!(approve.min_acr, Some(Acr::Mfa));
        assert_eq!(approve.max_ttl, Some(std::time::Duration::from_secs(90)));
        assert!(!approve.refresh);
        let read = policy.constraints(&scopes(&["payments:read"]));
        assert_eq!(read.min_acr, Some(Acr::Pwd));
        assert_eq!(read.max_ttl, Some(std::time::Duration::from_secs(3600)));
        assert!(read.refresh);
        assert!(
            read.permits(GrantType::ClientCredentials, Some(Acr::Pwd))
                .is_ok()
        );
        assert!(
            read.permits(GrantType::RefreshToken, Some(Acr::Pwd))
                .is_err()
        );
        assert!(policy.constraints(&scopes(&["audit:read"])).refresh);
    }
}
