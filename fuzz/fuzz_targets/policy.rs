//! Fuzzes the duty policy's parser (`Policy::from_toml`) on any text, and then every query a
//! service makes of a policy that parsed; and the `max_ttl` duration syntax on its own.
//!
//! Invariants: nothing panics; an error names a line inside the text; a parsed duration is
//! positive and reads back the same when written in seconds.

#![no_main]

use std::collections::BTreeSet;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use trias_policy::{Acr, GrantType, Policy, parse_duration};

/// Asks a parsed policy everything the issuer and the validator ask of one.
fn query(policy: &Policy) {
    let scopes: BTreeSet<String> = policy.scopes().map(str::to_owned).collect();
    let roles: Vec<String> = policy.roles().map(str::to_owned).collect();
    for role in &roles {
        let _ = policy.role_scopes(role);
        let held: BTreeSet<String> = roles.iter().filter(|r| *r != role).cloned().collect();
        let _ = policy.may_hold_role(&held, role);
    }
    let _ = policy.scopes_of_roles(roles.iter().map(String::as_str));
    let _ = policy.check_token_scopes(&scopes);
    for conflict in policy.conflicts() {
        let _ = policy.spans(&scopes, conflict);
    }
    for audience in policy.audiences() {
        let _ = policy.audience_for_resource(audience.id());
        if let Some(resource) = audience.resource() {
            assert!(policy.audience_for_resource(resource).is_some());
        }
        for (action, scope) in audience.actions() {
            assert_eq!(
                policy.scope_for_action(audience.id(), action).ok(),
                Some(scope.as_str())
            );
        }
        let _ = policy.dual_control(audience.id());
    }
    let _ = policy.default_audience();
    let _ = policy.audiences_for_scopes(&scopes);
    let constraints = policy.constraints(&scopes);
    for grant in GrantType::ALL {
        for acr in [None, Some(Acr::Pwd), Some(Acr::Mfa)] {
            let _ = constraints.permits(grant, acr);
        }
    }
    let _ = constraints.cap_ttl(Duration::from_secs(u64::MAX));
}

fuzz_target!(|text: &str| {
    match Policy::from_toml("fuzz.toml", text) {
        Ok(policy) => query(&policy),
        Err(error) => {
            if let Some(line) = error.line {
                assert!(
                    line >= 1 && line <= text.split('\n').count(),
                    "line {line} is outside the text: {error}"
                );
            }
            let _ = error.to_string();
        }
    }
    if let Some(duration) = parse_duration(text) {
        assert!(duration > Duration::ZERO);
        assert_eq!(
            parse_duration(&format!("{}s", duration.as_secs())),
            Some(duration)
        );
    }
});
