//! Per-scope constraints: the `[scope."pattern"]` rules and what they demand of a token request.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{ConstraintViolation, UnknownAcr, UnknownGrantType};

/// An OAuth 2.0 grant type the issuer supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GrantType {
    /// `client_credentials`: a client acting for itself.
    ClientCredentials,
    /// `authorization_code`: an interactive user login.
    AuthorizationCode,
    /// `refresh_token`: a rotation of an earlier grant.
    RefreshToken,
}

impl GrantType {
    /// Every grant type, in declaration order.
    pub const ALL: [GrantType; 3] = [
        GrantType::ClientCredentials,
        GrantType::AuthorizationCode,
        GrantType::RefreshToken,
    ];

    /// The OAuth name, as in a token request's `grant_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::ClientCredentials => "client_credentials",
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::RefreshToken => "refresh_token",
        }
    }
}

impl FromStr for GrantType {
    type Err = UnknownGrantType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GrantType::ALL
            .into_iter()
            .find(|grant| grant.as_str() == s)
            .ok_or_else(|| UnknownGrantType(s.to_owned()))
    }
}

impl fmt::Display for GrantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authentication context class: how strongly a user proved who they are.
///
/// Ordered by strength, so `Acr::Pwd < Acr::Mfa`; the variant order is therefore significant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Acr {
    /// `pwd`: a password alone.
    Pwd,
    /// `mfa`: a password and a second factor.
    Mfa,
}

impl Acr {
    /// Every acr, weakest first.
    pub const ALL: [Acr; 2] = [Acr::Pwd, Acr::Mfa];

    /// The name used in the policy and in a token's `acr` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Acr::Pwd => "pwd",
            Acr::Mfa => "mfa",
        }
    }
}

impl FromStr for Acr {
    type Err = UnknownAcr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Acr::ALL
            .into_iter()
            .find(|acr| acr.as_str() == s)
            .ok_or_else(|| UnknownAcr(s.to_owned()))
    }
}

impl fmt::Display for Acr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which scopes a `[scope."pattern"]` rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScopePattern {
    /// One scope, written in full.
    Exact(String),
    /// Every scope starting with the prefix, written `prefix*`.
    Prefix(String),
}

impl ScopePattern {
    pub(crate) fn parse(pattern: &str) -> ScopePattern {
        match pattern.strip_suffix('*') {
            Some(prefix) => ScopePattern::Prefix(prefix.to_owned()),
            None => ScopePattern::Exact(pattern.to_owned()),
        }
    }

    pub(crate) fn matches(&self, scope: &str) -> bool {
        match self {
            ScopePattern::Exact(exact) => scope == exact,
            ScopePattern::Prefix(prefix) => scope.starts_with(prefix.as_str()),
        }
    }
}

/// One validated `[scope."pattern"]` rule.
#[derive(Clone, Debug)]
pub(crate) struct ScopeRule {
    /// The pattern as written, kept so that a violation can name the rule.
    pub(crate) source: String,
    pub(crate) pattern: ScopePattern,
    pub(crate) grant_types: Option<BTreeSet<GrantType>>,
    pub(crate) min_acr: Option<Acr>,
    pub(crate) max_ttl: Option<Duration>,
    pub(crate) refresh: Option<bool>,
}

/// What the `[scope.*]` rules matching a set of scopes demand of a token carrying them.
///
/// The four public fields are the merged result; the rules that produced them are kept too so that
/// [`Constraints::permits`] can say which scope and rule a request fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraints {
    /// The grant types every matching rule allows (their intersection); `None` means any.
    pub grant_types: Option<BTreeSet<GrantType>>,
    /// The strongest `min_acr` of the matching rules.
    pub min_acr: Option<Acr>,
    /// The smallest `max_ttl` of the matching rules.
    pub max_ttl: Option<Duration>,
    /// Whether a refresh token may be issued: false as soon as one matching rule says false.
    pub refresh: bool,
    /// The rules that matched, with the requested scope each matched, in scope order.
    applied: Vec<Applied>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    scope: String,
    pattern: String,
    grant_types: Option<BTreeSet<GrantType>>,
    min_acr: Option<Acr>,
}

impl Default for Constraints {
    /// No constraint at all: what a set of scopes matching no rule gets.
    fn default() -> Self {
        Constraints {
            grant_types: None,
            min_acr: None,
            max_ttl: None,
            refresh: true,
            applied: Vec::new(),
        }
    }
}

impl Constraints {
    /// Merges every rule that matches at least one of the scopes.
    pub(crate) fn merge(rules: &[ScopeRule], scopes: &BTreeSet<String>) -> Constraints {
        let mut merged = Constraints::default();
        for scope in scopes {
            for rule in rules.iter().filter(|rule| rule.pattern.matches(scope)) {
                if let Some(allowed) = &rule.grant_types {
                    merged.grant_types = Some(match merged.grant_types.take() {
                        Some(so_far) => so_far.intersection(allowed).copied().collect(),
                        None => allowed.clone(),
                    });
                }
                merged.min_acr = merged.min_acr.max(rule.min_acr);
                if let Some(ttl) = rule.max_ttl {
                    merged.max_ttl = Some(merged.max_ttl.map_or(ttl, |so_far| so_far.min(ttl)));
                }
                if rule.refresh == Some(false) {
                    merged.refresh = false;
                }
                merged.applied.push(Applied {
                    scope: scope.clone(),
                    pattern: rule.source.clone(),
                    grant_types: rule.grant_types.clone(),
                    min_acr: rule.min_acr,
                });
            }
        }
        merged
    }

    /// Checks a grant type and the authentication's acr (`None` when there was no user, as in a
    /// client credentials grant) against every matching rule.
    pub fn permits(&self, grant: GrantType, acr: Option<Acr>) -> Result<(), ConstraintViolation> {
        // Checking rule by rule, rather than against the merged set, is what lets the error name
        // the scope and the rule that refuse.
        for applied in &self.applied {
            if let Some(allowed) = &applied.grant_types
                && !allowed.contains(&grant)
            {
                return Err(ConstraintViolation::GrantType {
                    scope: applied.scope.clone(),
                    pattern: applied.pattern.clone(),
                    grant,
                    allowed: allowed.clone(),
                });
            }
        }
        for applied in &self.applied {
            // `None < Some(_)`, so no authentication is weaker than any acr.
            if let Some(required) = applied.min_acr
                && acr < Some(required)
            {
                return Err(ConstraintViolation::AcrTooWeak {
                    scope: applied.scope.clone(),
                    pattern: applied.pattern.clone(),
                    required,
                    got: acr,
                });
            }
        }
        Ok(())
    }

    /// The lifetime a token gets: the requested (or default) lifetime, capped by `max_ttl`.
    pub fn cap_ttl(&self, requested: Duration) -> Duration {
        self.max_ttl.map_or(requested, |max| requested.min(max))
    }
}

/// Parses a positive duration written as an integer and one unit: `30s`, `5m`, `1h` or `1d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let unit_len = text.chars().last()?.len_utf8();
    let (number, unit) = text.split_at(text.len() - unit_len);
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => return None,
    };
    // `u64::from_str` would accept a leading `+`, which the format does not.
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let count: u64 = number.parse().ok()?;
    let seconds = count.checked_mul(seconds_per_unit)?;
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    fn rule(pattern: &str) -> ScopeRule {
        ScopeRule {
            source: pattern.to_owned(),
            pattern: ScopePattern::parse(pattern),
            grant_types: None,
            min_acr: None,
            max_ttl: None,
            refresh: None,
        }
    }

    fn scopes(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn grants(list: &[GrantType]) -> Option<BTreeSet<GrantType>> {
        Some(list.iter().copied().collect())
    }

    #[test]
    fn grant_type_names_round_trip() {
        for grant in GrantType::ALL {
            assert_eq!(grant.as_str().parse::<GrantType>(), Ok(grant));
            assert_eq!(grant.to_string(), grant.as_str());
        }
        assert_eq!(
            "authorization_code".parse::<GrantType>(),
            Ok(GrantType::AuthorizationCode)
        );
        assert_eq!(
            "password".parse::<GrantType>(),
            Err(UnknownGrantType("password".into()))
        );
    }

    #[test]
    fn acr_names_round_trip_and_order_by_strength() {
        for acr in Acr::ALL {
            assert_eq!(acr.as_str().parse::<Acr>(), Ok(acr));
        }
        assert_eq!("mfa".parse::<Acr>(), Ok(Acr::Mfa));
        assert!(Acr::Pwd < Acr::Mfa);
        assert_eq!("otp".parse::<Acr>(), Err(UnknownAcr("otp".into())));
    }

    #[test]
    fn durations_parse_with_a_unit() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86400)));
        for bad in [
            "",
            "0s",
            "5",
            "m",
            "5 m",
            "+5m",
            "-5m",
            "5M",
            "1.5h",
            "5ms",
            "é",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn patterns_match_exactly_or_by_prefix() {
        let exact = ScopePattern::parse("admin:keys");
        assert!(exact.matches("admin:keys"));
        assert!(!exact.matches("admin:keys2"));
        let prefix = ScopePattern::parse("admin:*");
        assert!(prefix.matches("admin:keys"));
        assert!(prefix.matches("admin:"));
        assert!(!prefix.matches("audit:read"));
    }

    #[test]
    fn no_matching_rule_means_no_constraint() {
        let constraints = Constraints::merge(&[rule("admin:*")], &scopes(&["payments:read"]));
        assert_eq!(constraints, Constraints::default());
        assert!(constraints.refresh);
        assert_eq!(
            constraints.permits(GrantType::ClientCredentials, None),
            Ok(())
        );
        assert_eq!(
            constraints.cap_ttl(Duration::from_secs(600)),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn matching_rules_merge_to_the_strictest() {
        use GrantType::*;
        let admin = ScopeRule {
            grant_types: grants(&[AuthorizationCode, RefreshToken]),
            min_acr: Some(Acr::Pwd),
            max_ttl: Some(Duration::from_secs(600)),
            refresh: Some(true),
            ..rule("admin:*")
        };
        let keys = ScopeRule {
            grant_types: grants(&[AuthorizationCode, ClientCredentials]),
            min_acr: Some(Acr::Mfa),
            max_ttl: Some(Duration::from_secs(60)),
            refresh: Some(false),
            ..rule("admin:keys")
        };
        let audit = ScopeRule {
            max_ttl: Some(Duration::from_secs(3600)),
            ..rule("audit:read")
        };
        let rules = [admin, keys, audit];

        let merged = Constraints::merge(&rules, &scopes(&["admin:keys", "audit:read"]));
        assert_eq!(merged.grant_types, grants(&[AuthorizationCode]));
        assert_eq!(merged.min_acr, Some(Acr::Mfa));
        assert_eq!(merged.max_ttl, Some(Duration::from_secs(60)));
        assert!(!merged.refresh);
        assert_eq!(
            merged.cap_ttl(Duration::from_secs(300)),
            Duration::from_secs(60)
        );
        assert_eq!(
            merged.cap_ttl(Duration::from_secs(30)),
            Duration::from_secs(30)
        );

        // Only the wildcard matches `admin:roles`, so only its (laxer) terms apply.
        let wildcard_only = Constraints::merge(&rules, &scopes(&["admin:roles"]));
        assert_eq!(
            wildcard_only.grant_types,
            grants(&[AuthorizationCode, RefreshToken])
        );
        assert_eq!(wildcard_only.min_acr, Some(Acr::Pwd));
        assert_eq!(wildcard_only.max_ttl, Some(Duration::from_secs(600)));
        assert!(wildcard_only.refresh);
    }

    #[test]
    fn permits_names_the_scope_and_rule_that_refuse() {
        let admin = ScopeRule {
            grant_types: grants(&[GrantType::AuthorizationCode]),
            min_acr: Some(Acr::Mfa),
            ..rule("admin:*")
        };
        let constraints = Constraints::merge(&[admin], &scopes(&["admin:clients", "audit:read"]));

        assert_eq!(
            constraints.permits(GrantType::AuthorizationCode, Some(Acr::Mfa)),
            Ok(())
        );

        let wrong_grant = constraints
            .permits(GrantType::ClientCredentials, None)
            .unwrap_err();
        assert_eq!(
            wrong_grant.to_string(),
            r#"scope "admin:clients" may only be granted by authorization_code (rule "admin:*")"#
        );
        assert!(matches!(
            wrong_grant,
            ConstraintViolation::GrantType {
                grant: GrantType::ClientCredentials,
                ..
            }
        ));

        let weak = constraints
            .permits(GrantType::AuthorizationCode, Some(Acr::Pwd))
            .unwrap_err();
        assert_eq!(
            weak.to_string(),
            r#"scope "admin:clients" needs acr mfa or stronger, got pwd (rule "admin:*")"#
        );
        let none = constraints
            .permits(GrantType::AuthorizationCode, None)
            .unwrap_err();
        assert!(none.to_string().contains("got none"), "{none}");
    }

    #[test]
    fn disjoint_grant_types_refuse_every_grant() {
        let a = ScopeRule {
            grant_types: grants(&[GrantType::AuthorizationCode]),
            ..rule("a")
        };
        let b = ScopeRule {
            grant_types: grants(&[GrantType::ClientCredentials]),
            ..rule("b")
        };
        let constraints = Constraints::merge(&[a, b], &scopes(&["a", "b"]));
        assert_eq!(constraints.grant_types, Some(BTreeSet::new()));
        for grant in GrantType::ALL {
            assert!(constraints.permits(grant, Some(Acr::Mfa)).is_err());
        }
    }
}
