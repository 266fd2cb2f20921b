//! The validator end to end: tokens from a running issuer, checked over gRPC and introspected
//! over HTTP; every reason code, forged tokens, revocation through the feed, maker-checker on
//! one object, key rotation, and the validator carrying on while the issuer is down.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::time::{Duration, Instant};

use data_encoding::BASE64URL_NOPAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use tonic::Code;
use trias_issuer::issuer::Actor;
use trias_issuer::keys::KeyAlgorithm;
use trias_proto::v1::{
    CheckBatchRequest, CheckDecision, CheckRequest, Decision, EventKind, GetJwksRequest, Reason,
    RevokeRequest, TokenRequest,
};
use trias_tests::validator::{
    PAYMENTS_BACKEND, ValidatorHandle, ValidatorOptions, start_validator,
};
use trias_tests::{
    Backend, IssuerHandle, IssuerOptions, assert_no_bearer_values, client_credentials, jwt_parts,
    start_issuer,
};

async fn stack(backend: Backend, policy: String) -> Option<(IssuerHandle, ValidatorHandle)> {
    let issuer = start_issuer(IssuerOptions {
        policy: policy.clone(),
        ..IssuerOptions::on(backend)
    })
    .await?;
    let validator = start_validator(
        &issuer,
        ValidatorOptions {
            policy,
            ..ValidatorOptions::on(backend)
        },
    )
    .await?;
    Some((issuer, validator))
}

async fn stop(issuer: IssuerHandle, validator: ValidatorHandle) {
    validator.stop().await;
    issuer.stop().await;
}

/// A service client holding `roles`, and a token for `scope` at the default audience.
async fn token_for(
    issuer: &IssuerHandle,
    roles: &[&str],
    scope: &str,
) -> (String, (String, String)) {
    token_at(issuer, roles, scope, "").await
}

/// A service client holding `roles`, and a token for `scope` at `resource` (RFC 8707).
async fn token_at(
    issuer: &IssuerHandle,
    roles: &[&str],
    scope: &str,
    resource: &str,
) -> (String, (String, String)) {
    let scopes: Vec<&str> = scope.split(' ').collect();
    let client = issuer.service_client(roles, &scopes).await;
    let request = TokenRequest {
        resource: resource.into(),
        ..client_credentials(&client.0, &client.1, scope)
    };
    let token = issuer
        .grpc()
        .await
        .token(request)
        .await
        .unwrap()
        .into_inner()
        .access_token;
    (token, client)
}

#[track_caller]
fn denied(decision: &CheckDecision, reason: Reason) {
    assert!(!decision.allowed, "{decision:?}");
    assert_eq!(decision.reason(), reason, "{decision:?}");
    assert!(
        decision.subject.is_empty() && decision.token_id.is_empty(),
        "{decision:?}"
    );
}

both_backends!(an_allowed_check_carries_the_token_facts_and_is_audited);
async fn an_allowed_check_carries_the_token_facts_and_is_audited(backend: Backend) {
    let Some((issuer, validator)) = stack(backend, trias_policy::SAMPLE.into()).await else {
        return;
    };
    let (token, client) = token_for(&issuer, &["clerk"], "payments:create").await;
    let claims = jwt_parts(&token).1;
    let decision = validator
        .check(&token, "payment.create", "payment/1", "payments")
        .await;
    assert!(decision.allowed, "{decision:?}");
    assert_eq!(decision.reason(), Reason::Ok);
    assert_eq!(decision.subject, claims["sub"].as_str().unwrap());
    assert_eq!(decision.client_id, client.0);
    assert_eq!(decision.scopes, ["payments:create"]);
    assert_eq!(decision.token_id, claims["jti"].as_str().unwrap());
    assert_eq!(
        decision.expires_at.unwrap().seconds,
        claims["exp"].as_i64().unwrap()
    );
    // The second check of the same token is a cache hit and answers the same.
    let again = validator
        .check(&token, "payment.create", "payment/2", "payments")
        .await;
    assert_eq!(again, CheckDecision { ..decision.clone() });
    assert_eq!(validator.validator.cache().len(), 1);

    // Wrong audience, insufficient scope, unknown action.
    let wrong = validator.check(&token, "audit.query", "", "auditor").await;
    denied(&wrong, Reason::WrongAudience);
    let scope = validator
        .check(&token, "payment.read", "", "payments")
        .await;
    denied(&scope, Reason::InsufficientScope);
    let unknown = validator
        .check(&token, "payment.launder", "", "payments")
        .await;
    denied(&unknown, Reason::UnknownAction);

    // Every check is an audit event with its reason, and no token in it.
    let events = validator.check_events().await;
    assert_eq!(events.len(), 5);
    let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "",
            "",
            "wrong_audience",
            "insufficient_scope",
            "unknown_action"
        ]
    );
    assert_eq!(events[0].decision(), Decision::Allow);
    assert_eq!(events[2].decision(), Decision::Deny);
    for event in &events {
        assert_eq!(event.subject, decision.subject);
        assert_eq!(event.client_id, client.0);
        assert_eq!(event.token_id, decision.token_id);
        assert_eq!(event.producer, "validator");
    }
    assert_eq!(events[0].audience, "payments");
    assert_eq!(events[0].action, "payment.create");
    assert_eq!(events[0].resource, "payment/1");
    assert_no_bearer_values(&events, &[&token, &client.1]);
    stop(issuer, validator).await;
}

both_backends!(requests_that_cannot_be_decided_are_errors);
async fn requests_that_cannot_be_decided_are_errors(backend: Backend) {
    let Some((issuer, validator)) = stack(backend, trias_policy::SAMPLE.into()).await else {
        return;
    };
    let mut grpc = validator.grpc().await;
    let request = |action: &str, audience: &str, resource: &str| CheckRequest {
        token: "x.y.z".into(),
        action: action.into(),
        resource: resource.into(),
        audience: audience.into(),
        context: Default::default(),
    };
    for bad in [
        request("", "payments", "payment/1"),
        // A dual-controlled action needs the object it acts on.
        request("payment.create", "payments", ""),
    ] {
        let status = grpc.check(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let too_many = CheckBatchRequest {
        checks: vec![request("payment.read", "payments", ""); 1001],
    };
    let status = grpc.check_batch(too_many).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(validator.check_events().await.is_empty());

    // A caller whose identity is bound to no audience is refused, and the refusal recorded.
    let mut impostor = validator.grpc_as("impostor").await;
    let status = impostor
        .check(request("payment.read", "payments", "payment/1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("spiffe://trias/impostor"),
        "{status:?}"
    );
    let refusals = validator.events_of(EventKind::AccessDenied).await;
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].attributes["caller"], "spiffe://trias/impostor");
    assert_eq!(refusals[0].action, "Check");
    stop(issuer, validator).await;
}

both_backends!(the_callers_identity_decides_its_audience);
/// Under mTLS the audience is the caller's: a token minted for `payments` presented by the
/// `reports` service is denied `wrong_audience` whatever the request says, and so is a
/// request naming an audience other than the caller's.
async fn the_callers_identity_decides_its_audience(backend: Backend) {
    let policy = format!(
        "{}\n[[audience]]\nid = \"reports\"\nactions = {{ \"report.read\" = \"payments:read\" }}\n",
        trias_policy::SAMPLE
    );
    let Some((issuer, validator)) = stack(backend, policy).await else {
        return;
    };
    let (token, _) = token_for(&issuer, &["clerk"], "payments:read").await;
    let check = |audience: &str| CheckRequest {
        token: token.clone(),
        action: "payment.read".into(),
        resource: "payment/1".into(),
        audience: audience.into(),
        context: Default::default(),
    };
    let mut payments = validator.grpc_as("payments").await;
    let mut reports = validator.grpc_as("reports").await;
    for audience in ["", "payments"] {
        let decision = payments.check(check(audience)).await.unwrap().into_inner();
        assert!(decision.allowed, "{audience:?}: {decision:?}");
    }
    for audience in ["", "payments", "reports"] {
        let decision = reports.check(check(audience)).await.unwrap().into_inner();
        denied(&decision, Reason::WrongAudience);
    }
    let events = validator.check_events().await;
    let last = events.last().unwrap();
    assert_eq!(last.audience, "reports");
    assert_eq!(last.attributes["caller"], "spiffe://trias/reports");
    assert_eq!(last.reason, "wrong_audience");
    stop(issuer, validator).await;
}

both_backends!(a_batch_answers_in_order);
async fn a_batch_answers_in_order(backend: Backend) {
    let Some((issuer, validator)) = stack(backend, trias_policy::SAMPLE.into()).await else {
        return;
    };
    let (token, _) = token_for(&issuer, &["clerk"], "payments:read payments:create").await;
    let check = |token: &str, action: &str, audience: &str| CheckRequest {
        token: token.into(),
        action: action.into(),
        resource: "payment/5".into(),
        audience: audience.into(),
        context: [("request_id".to_owned(), "r-1".to_owned())].into(),
    };
    let checks = vec![
        check(&token, "payment.read", "payments"),
        check("garbage", "payment.read", "payments"),
        check(&token, "payment.approve", "payments"),
        check(&token, "payment.create", "payments"),
        check(&token, "audit.query", "auditor"),
    ];
    let decisions = validator
        .grpc()
        .await
        .check_batch(CheckBatchRequest { checks })
        .await
        .unwrap()
        .into_inner()
        .decisions;
    let reasons: Vec<Reason> = decisions.iter().map(CheckDecision::reason).collect();
    assert_eq!(
        reasons,
        [
            Reason::Ok,
            Reason::Malformed,
            Reason::InsufficientScope,
            Reason::Ok,
            Reason::WrongAudience
        ]
    );
    let events = validator.check_events().await;
    assert_eq!(events.len(), 5);
    assert!(
        events
            .iter()
            .all(|e| e.attributes.get("context.request_id").map(String::as_str) == Some("r-1"))
    );
    stop(issuer, validator).await;
}

both_backends!(expiry_follows_the_shared_clock_with_the_skew);
async fn expiry_follows_the_shared_clock_with_the_skew(backend: Backend) {
    let Some((issuer, validator)) = stack(backend, trias_policy::SAMPLE.into()).await else {
        return;
    };
    let (token, _) = token_for(&issuer, &["clerk"], "payments:read").await;
    let exp = jwt_parts(&token).1["exp"].as_i64().unwrap();
    let read = || validator.check(&token, "payment.read", "", "payments");
    assert!(read().await.allowed);
    // Within the 5 s skew past exp the token still passes; at exp + 5 it is expired.
    issuer.advance(u64::try_from(exp - issuer.now()).unwrap() + 4);
    assert!(read().await.allowed);
    issuer.advance(1);
    denied(&read().await, Reason::Expired);
    stop(issuer, validator).await;
}

both_backends!(a_revoked_token_is_denied_within_a_second);
async fn a_revoked_token_is_denied_within_a_second(backend: Backend) {
    let Some((issuer, validator)) = stack(backend, trias_policy::SAMPLE.into()).await else {
        return;
    };
    let (token, client) = token_for(&issuer, &["clerk"], "payments:read").await;
    let (other, _) = token_for(&issuer, &["clerk"], "payments:read").await;
    assert!(
        validator
            .check(&token, "payment.read", "", "payments")
            .await
            .allowed
    );
    issuer
        .grpc()
        .await
        .revoke(RevokeRequest {
            token: token.clone(),
            token_type_hint: "access_token".into(),
            client_id: client.0.clone(),
            client_secret: client.1.clone(),
        })
        .await
        .unwrap();
    let revoked_at = Instant::now();
    loop {
        let decision = validator
            .check(&token, "payment.read", "", "payments")
            .await;
        if !decision.allowed {
            denied(&decision, Reason::Revoked);
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "the revocation did not reach the validator within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Other tokens are untouched.
    assert!(
        validator
            .check(&other, "payment.read", "", "payments")
            .await
            .allowed
    );
    stop(issuer, validator).await;
}

both_backends!(maker_checker_on_one_object);
async fn maker_checker_on_one_object(backend: Backend) {
    let Some((issuer, validator)) =
        stack(backend, trias_tests::policy_without_static_conflict()).await
    else {
        return;
    };
    let (alice, _) = token_for(
        &issuer,
        &["clerk", "approver"],
        "payments:create payments:approve",
    )
    .await;
    let (bob, _) = token_for(&issuer, &["approver"], "payments:approve").await;
    let created = validator
        .check(&alice, "payment.create", "payment/7", "payments")
        .await;
    assert!(created.allowed, "{created:?}");
    // Creating again is the same action: allowed.
    assert!(
        validator
            .check(&alice, "payment.create", "payment/7", "payments")
            .await
            .allowed
    );
    let self_approved = validator
        .check(&alice, "payment.approve", "payment/7", "payments")
        .await;
    assert!(!self_approved.allowed);
    assert_eq!(self_approved.reason(), Reason::DutyConflict);
    assert!(
        self_approved.detail.contains("payment.create"),
        "{self_approved:?}"
    );
    let approved = validator
        .check(&bob, "payment.approve", "payment/7", "payments")
        .await;
    assert!(approved.allowed, "{approved:?}");
    // On another object alice may approve.
    assert!(
        validator
            .check(&alice, "payment.approve", "payment/8", "payments")
            .await
            .allowed
    );
    let events = validator.check_events().await;
    let conflict = events.iter().find(|e| e.reason == "duty_conflict").unwrap();
    assert_eq!(conflict.resource, "payment/7");
    assert_eq!(conflict.action, "payment.approve");
    assert_eq!(conflict.subject, created.subject);
    stop(issuer, validator).await;
}

both_backends!(concurrent_conflicting_attempts_one_wins);
async fn concurrent_conflicting_attempts_one_wins(backend: Backend) {
    let Some((issuer, validator)) =
        stack(backend, trias_tests::policy_without_static_conflict()).await
    else {
        return;
    };
    let (mallory, _) = token_for(
        &issuer,
        &["approver", "treasurer"],
        "payments:approve payments:execute",
    )
    .await;
    for round in 0..5 {
        let object = format!("payment/{round}");
        let checks = ["payment.approve", "payment.execute"].map(|action| CheckRequest {
            token: mallory.clone(),
            action: action.into(),
            resource: object.clone(),
            audience: "payments".into(),
            context: Default::default(),
        });
        let (a, b) = {
            let (mut one, mut two) = (validator.grpc().await, validator.grpc().await);
            let [first, second] = checks;
            tokio::join!(one.check(first), two.check(second))
        };
        let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
        assert!(
            a.allowed != b.allowed,
            "round {round}: exactly one wins: {a:?} {b:?}"
        );
        let loser = if a.allowed { b } else { a };
        assert_eq!(loser.reason(), Reason::DutyConflict);
    }
    stop(issuer, validator).await;
}

/// A JWT with the given header and claims, signed by `sign` over `header.payload`.
fn compact(header: &Value, claims: &Value, signature: &[u8]) -> String {
    let h = BASE64URL_NOPAD.encode(header.to_string().as_bytes());
    let p = BASE64URL_NOPAD.encode(claims.to_string().as_bytes());
    format!("{h}.{p}.{}", BASE64URL_NOPAD.encode(signature))
}

/// An attacker's own Ed25519 key, as a jsonwebtoken key and its public JWK `x`.
fn attacker_key() -> (EncodingKey, String) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let x = BASE64URL_NOPAD.encode(pair.public_key().as_ref());
    (EncodingKey::from_ed_der(pkcs8.as_ref()), x)
}

fn sign(header: Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

both_backends!(forged_tokens_are_denied_with_their_reason);
async fn forged_tokens_are_denied_with_their_reason(backend: Backend) {
    let Some((issuer, validator)) = stack(backend, trias_policy::SAMPLE.into()).await else {
        return;
    };
    let (token, _) = token_for(&issuer, &["clerk"], "payments:read").await;
    let (header, claims) = jwt_parts(&token);
    let kid = header["kid"].as_str().unwrap().to_owned();
    let jwks = issuer
        .grpc()
        .await
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let public_x = jwks.keys.iter().find(|k| k.kid == kid).unwrap().x.clone();
    let (attacker, attacker_x) = attacker_key();
    let parts: Vec<&str> = token.split('.').collect();

    let mut cases: Vec<(&str, String, Reason)> = Vec::new();
    // alg none, with and without a signature.
    let none = json!({"alg": "none", "typ": "at+jwt", "kid": kid});
    cases.push((
        "alg none",
        compact(&none, &claims, b""),
        Reason::UnsupportedAlgorithm,
    ));
    cases.push((
        "alg none signed",
        compact(&none, &claims, b"sig"),
        Reason::UnsupportedAlgorithm,
    ));
    // HMAC with the issuer's public key as the secret (key confusion).
    for secret in [
        public_x.as_bytes().to_vec(),
        BASE64URL_NOPAD.decode(public_x.as_bytes()).unwrap(),
    ] {
        let mut hs = Header::new(Algorithm::HS256);
        hs.typ = Some("at+jwt".into());
        hs.kid = Some(kid.clone());
        cases.push((
            "hs256",
            sign(hs, &claims, &EncodingKey::from_secret(&secret)),
            Reason::UnsupportedAlgorithm,
        ));
    }
    // A modified payload under the real signature.
    let mut modified = claims.clone();
    modified["scope"] = json!("payments:read payments:approve");
    let forged_payload = BASE64URL_NOPAD.encode(modified.to_string().as_bytes());
    cases.push((
        "modified payload",
        format!("{}.{forged_payload}.{}", parts[0], parts[2]),
        Reason::BadSignature,
    ));
    // A signature that is not the token's.
    let mut flipped = BASE64URL_NOPAD.decode(parts[2].as_bytes()).unwrap();
    flipped[0] ^= 1;
    cases.push((
        "flipped signature",
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            BASE64URL_NOPAD.encode(&flipped)
        ),
        Reason::BadSignature,
    ));
    // The attacker's own key: under a made-up kid, and under the real kid.
    let mut own = Header::new(Algorithm::EdDSA);
    own.typ = Some("at+jwt".into());
    own.kid = Some("attacker-key".into());
    cases.push((
        "unknown kid",
        sign(own.clone(), &claims, &attacker),
        Reason::UnknownKey,
    ));
    own.kid = Some(format!("{kid}/../../etc/passwd"));
    cases.push((
        "kid injection",
        sign(own.clone(), &claims, &attacker),
        Reason::UnknownKey,
    ));
    own.kid = Some(kid.clone());
    cases.push((
        "real kid, attacker's key",
        sign(own.clone(), &claims, &attacker),
        Reason::BadSignature,
    ));
    // The attacker's key embedded in the header, or pointed to: never used.
    let mut embedded = own.clone();
    embedded.jwk =
        serde_json::from_value(json!({"kty": "OKP", "crv": "Ed25519", "x": attacker_x})).ok();
    embedded.jku = Some("https://attacker.example/jwks.json".into());
    embedded.x5u = Some("https://attacker.example/cert.pem".into());
    cases.push((
        "embedded jwk",
        sign(embedded, &claims, &attacker),
        Reason::BadSignature,
    ));
    // ES256 in the header for an EdDSA key.
    let es = json!({"alg": "ES256", "typ": "at+jwt", "kid": kid});
    cases.push((
        "alg swap",
        compact(&es, &claims, &[7; 64]),
        Reason::UnsupportedAlgorithm,
    ));
    // Wrong typ, crit, nested.
    let mut typ = own.clone();
    typ.typ = Some("JWT".into());
    cases.push(("typ JWT", sign(typ, &claims, &attacker), Reason::WrongType));
    let crit = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid, "crit": ["exp"]});
    cases.push((
        "crit",
        compact(&crit, &claims, &[7; 64]),
        Reason::UnknownCritical,
    ));
    let nested = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid, "cty": "JWT"});
    cases.push((
        "nested",
        compact(&nested, &json!(token), &[7; 64]),
        Reason::Malformed,
    ));
    // Duplicate members and non-canonical base64url.
    let duplicate = BASE64URL_NOPAD.encode(
        format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{kid}","kid":"other"}}"#).as_bytes(),
    );
    cases.push((
        "duplicate header",
        format!("{duplicate}.{}.{}", parts[1], parts[2]),
        Reason::Malformed,
    ));
    cases.push((
        "padded",
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        Reason::Malformed,
    ));
    // Garbage, truncated, oversized.
    cases.push(("garbage", "not a token".into(), Reason::Malformed));
    cases.push(("empty", String::new(), Reason::Malformed));
    cases.push((
        "truncated",
        format!("{}.{}", parts[0], parts[1]),
        Reason::Malformed,
    ));
    cases.push((
        "oversized",
        format!("{token}{}", "A".repeat(8192)),
        Reason::TokenTooLarge,
    ));

    for (name, forged, reason) in &cases {
        let decision = validator
            .check(forged, "payment.read", "", "payments")
            .await;
        assert!(!decision.allowed, "{name}: {decision:?}");
        assert_eq!(decision.reason(), *reason, "{name}: {decision:?}");
    }
    // The real token still passes, and every forgery was recorded as a deny.
    assert!(
        validator
            .check(&token, "payment.read", "", "payments")
            .await
            .allowed
    );
    let events = validator.check_events().await;
    assert_eq!(events.len(), cases.len() + 1);
    assert!(
        events[..cases.len()]
            .iter()
            .all(|e| e.decision() == Decision::Deny && e.subject.is_empty())
    );
    stop(issuer, validator).await;
}

both_backends!(introspection_answers_for_the_callers_audience);
async fn introspection_answers_for_the_callers_audience(backend: Backend) {
    let Some((issuer, validator)) = stack(backend, trias_policy::SAMPLE.into()).await else {
        return;
    };
    let (token, client) = token_for(&issuer, &["clerk"], "payments:read payments:create").await;
    let claims = jwt_parts(&token).1;
    let reply = validator.introspect(&token, Some(PAYMENTS_BACKEND)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("cache-control"), "no-store");
    let body = &reply.body;
    assert_eq!(body["active"], true);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "payments:create payments:read");
    assert_eq!(body["client_id"], client.0.as_str());
    for claim in ["sub", "exp", "iat", "iss", "aud", "jti"] {
        assert_eq!(body[claim], claims[claim], "{claim}");
    }
    // A token for another audience, a forged one, and an expired one are inactive, with
    // nothing else said.
    let (audit_token, _) = token_at(&issuer, &["security-analyst"], "audit:read", "auditor").await;
    for inactive in [audit_token.as_str(), "garbage"] {
        let reply = validator.introspect(inactive, Some(PAYMENTS_BACKEND)).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, json!({"active": false}));
    }
    // Bad or missing caller credentials.
    for basic in [
        None,
        Some((PAYMENTS_BACKEND.0, "wrong")),
        Some(("nobody", PAYMENTS_BACKEND.1)),
    ] {
        let reply = validator.introspect(&token, basic).await;
        assert_eq!(reply.status, 401, "{basic:?}");
        assert!(reply.header("www-authenticate").starts_with("Basic"));
    }
    issuer.advance(400);
    let reply = validator.introspect(&token, Some(PAYMENTS_BACKEND)).await;
    assert_eq!(reply.body, json!({"active": false}));
    let events = validator.check_events().await;
    assert_eq!(
        events.len(),
        4,
        "one event per introspection, none for refused callers"
    );
    assert!(
        events
            .iter()
            .all(|e| e.attributes.get("via").map(String::as_str) == Some("introspection"))
    );
    assert_eq!(events[3].reason, "expired");
    stop(issuer, validator).await;
}

/// An issuer and a validator that fetches the key set whenever it meets an unknown kid (no
/// rate limit to wait out), as a rotation test needs.
async fn stack_fetching_on_first_sight(
    backend: Backend,
) -> Option<(IssuerHandle, ValidatorHandle)> {
    let issuer = start_issuer(IssuerOptions::on(backend)).await?;
    let validator = start_validator(
        &issuer,
        ValidatorOptions {
            unknown_kid_min_interval: Duration::from_millis(1),
            ..ValidatorOptions::on(backend)
        },
    )
    .await?;
    Some((issuer, validator))
}

both_backends!(a_rotated_key_is_accepted_on_first_sight);
async fn a_rotated_key_is_accepted_on_first_sight(backend: Backend) {
    let Some((issuer, validator)) = stack_fetching_on_first_sight(backend).await else {
        return;
    };
    let (old, _) = token_for(&issuer, &["clerk"], "payments:read").await;
    issuer
        .issuer
        .rotate_keys(&Actor::Local, Some(KeyAlgorithm::ES256))
        .await
        .unwrap();
    issuer.advance(61);
    let (new, _) = token_for(&issuer, &["clerk"], "payments:read").await;
    assert_eq!(jwt_parts(&new).0["alg"], "ES256");
    let fetches = validator.validator.keys().fetches();
    for token in [&new, &old] {
        let decision = validator.check(token, "payment.read", "", "payments").await;
        assert!(decision.allowed, "{decision:?}");
    }
    assert_eq!(
        validator.validator.keys().fetches(),
        fetches + 1,
        "the new kid caused one fetch"
    );
    stop(issuer, validator).await;
}

both_backends!(checks_go_on_while_the_issuer_is_down);
async fn checks_go_on_while_the_issuer_is_down(backend: Backend) {
    let Some((mut issuer, validator)) = stack(backend, trias_policy::SAMPLE.into()).await else {
        return;
    };
    let (token, _) = token_for(&issuer, &["clerk"], "payments:read").await;
    let (unseen, _) = token_for(&issuer, &["clerk"], "payments:read").await;
    assert!(
        validator
            .check(&token, "payment.read", "", "payments")
            .await
            .allowed
    );
    issuer.begin_stop();
    // The issuer stops accepting connections within moments (its shutdown is asynchronous).
    let endpoint = trias_tests::transport("cli")
        .endpoint(
            &format!("http://{}", issuer.grpc_addr),
            &trias_runtime::tls::identity_of("issuer"),
        )
        .unwrap();
    let asked = Instant::now();
    while endpoint.connect().await.is_ok() {
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "the issuer still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A cached token and one never seen before (verified with the last good key set).
    for t in [&token, &unseen] {
        let decision = validator.check(t, "payment.read", "", "payments").await;
        assert!(decision.allowed, "{decision:?}");
    }
    // A made-up kid is refused without waiting on the absent issuer for long.
    let (attacker, _) = attacker_key();
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some("made-up".into());
    let forged = sign(header, &jwt_parts(&token).1, &attacker);
    let started = Instant::now();
    denied(
        &validator
            .check(&forged, "payment.read", "", "payments")
            .await,
        Reason::UnknownKey,
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    stop(issuer, validator).await;
}

both_backends!(key_rotation_during_a_check_storm_fails_no_check);
/// Keys rotate, back and forth between EdDSA and ES256, while clients mint and check tokens
/// without pause: no genuine token is ever refused, neither one signed by a key the validator
/// sees for the first time (all checkers meet it at once) nor one signed by the key just
/// retired.
async fn key_rotation_during_a_check_storm_fails_no_check(backend: Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    const CHECKERS: usize = 4;
    const ROTATIONS: usize = 4;
    let Some((issuer, validator)) = stack_fetching_on_first_sight(backend).await else {
        return;
    };
    let issuer = Arc::new(issuer);
    let validator = Arc::new(validator);
    let running = Arc::new(AtomicBool::new(true));
    let checks = Arc::new(AtomicU64::new(0));
    let mut storm = Vec::new();
    for _ in 0..CHECKERS {
        let client = issuer.service_client(&["clerk"], &["payments:read"]).await;
        let (issuer, validator) = (Arc::clone(&issuer), Arc::clone(&validator));
        let (running, checks) = (Arc::clone(&running), Arc::clone(&checks));
        storm.push(tokio::spawn(async move {
            let mut minting = issuer.grpc().await;
            let mut checking = validator.grpc().await;
            let mut previous: Option<String> = None;
            let mut kids = std::collections::BTreeSet::new();
            while running.load(Ordering::SeqCst) {
                let token = minting
                    .token(client_credentials(&client.0, &client.1, "payments:read"))
                    .await
                    .unwrap()
                    .into_inner()
                    .access_token;
                kids.insert(jwt_parts(&token).0["kid"].as_str().unwrap().to_owned());
                for t in std::iter::once(&token).chain(previous.as_ref()) {
                    let decision = checking
                        .check(CheckRequest {
                            token: t.clone(),
                            action: "payment.read".into(),
                            audience: "payments".into(),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert!(decision.allowed, "{decision:?}");
                    checks.fetch_add(1, Ordering::SeqCst);
                }
                previous = Some(token);
            }
            kids.len()
        }));
    }
    /// Waits for 50 more checks; a checker that stopped (its check was refused) ends the wait.
    async fn more_checks(checks: &AtomicU64, storm: &[tokio::task::JoinHandle<usize>]) {
        let before = checks.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while checks.load(Ordering::SeqCst) < before + 50 {
            assert!(
                storm.iter().all(|checker| !checker.is_finished()),
                "a checker stopped: a genuine token was refused"
            );
            assert!(Instant::now() < deadline, "the storm stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    for round in 0..ROTATIONS {
        let algorithm = if round % 2 == 0 {
            KeyAlgorithm::ES256
        } else {
            KeyAlgorithm::EdDSA
        };
        // Let the storm run on the current key, then publish the next and make it sign.
        more_checks(&checks, &storm).await;
        issuer
            .issuer
            .rotate_keys(&Actor::Local, Some(algorithm))
            .await
            .unwrap();
        issuer.advance(61);
    }
    more_checks(&checks, &storm).await;
    running.store(false, Ordering::SeqCst);
    for checker in storm {
        let kids = checker.await.unwrap();
        assert!(kids > ROTATIONS / 2, "a checker saw only {kids} keys sign");
    }
    let Ok(validator) = Arc::try_unwrap(validator) else {
        panic!("the validator is still shared");
    };
    let Ok(issuer) = Arc::try_unwrap(issuer) else {
        panic!("the issuer is still shared");
    };
    stop(issuer, validator).await;
}
