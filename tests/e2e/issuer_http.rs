//! The HTTP endpoints as any standard OAuth client sees them: server metadata, the JWKS, and
//! the token endpoint's RFC 6749 error responses and input limits.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use trias_proto::v1::EventKind;
use trias_tests::{Backend, IssuerOptions, assert_no_bearer_values, claims, start_issuer};

both_backends!(server_metadata_describes_the_issuer);
async fn server_metadata_describes_the_issuer(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let base = issuer.http_base();
    let reply = issuer.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").starts_with("application/json"));
    let metadata = reply.body;
    // RFC 8414 §2, and §3.3: the issuer is exactly the one tokens name.
    assert_eq!(metadata["issuer"], base.as_str());
    assert_eq!(metadata["token_endpoint"], format!("{base}/oauth2/token"));
    assert_eq!(
        metadata["revocation_endpoint"],
        format!("{base}/oauth2/revoke")
    );
    assert_eq!(
        metadata["jwks_uri"],
        format!("{base}/.well-known/jwks.json")
    );
    assert_eq!(
        metadata["response_types_supported"],
        serde_json::json!(["code"])
    );
    assert_eq!(
        metadata["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let grants = metadata["grant_types_supported"].as_array().unwrap();
    assert!(grants.contains(&"client_credentials".into()));
    assert!(grants.contains(&"authorization_code".into()));
    assert!(grants.contains(&"refresh_token".into()));
    assert!(!grants.contains(&"password".into()) && !grants.contains(&"implicit".into()));
    let scopes = metadata["scopes_supported"].as_array().unwrap();
    assert!(scopes.contains(&"payments:approve".into()));

    let (id, secret) = issuer.service_client(&["clerk"], &["payments:read"]).await;
    let token = issuer
        .post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials")],
            Some((&id, &secret)),
        )
        .await;
    let token = token.body["access_token"].as_str().unwrap();
    assert_eq!(claims(token)["iss"], metadata["issuer"]);
    issuer.stop().await;
}

both_backends!(the_jwks_holds_public_keys_only);
async fn the_jwks_holds_public_keys_only(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let reply = issuer.get("/.well-known/jwks.json").await;
    assert_eq!(reply.status, 200);
    let keys = reply.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()));
    // 32 bytes of Ed25519 public key, base64url without padding.
    assert_eq!(key["x"].as_str().unwrap().len(), 43);
    assert!(!reply.body.to_string().contains("\"d\""), "no private part");
    issuer.stop().await;
}

both_backends!(token_errors_are_rfc6749_json);
async fn token_errors_are_rfc6749_json(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let (id, secret) = issuer.service_client(&["clerk"], &["payments:read"]).await;
    let basic = Some((id.as_str(), secret.as_str()));
    let grant = ("grant_type", "client_credentials");

    let missing = issuer.post_form("/oauth2/token", &[], basic).await;
    assert_eq!((missing.status, missing.error()), (400, "invalid_request"));
    assert_eq!(missing.header("cache-control"), "no-store");
    assert!(
        missing
            .header("content-type")
            .starts_with("application/json")
    );
    assert!(missing.body["error_description"].is_string());

    let scope = issuer
        .post_form(
            "/oauth2/token",
            &[grant, ("scope", "payments:approve")],
            basic,
        )
        .await;
    assert_eq!((scope.status, scope.error()), (400, "invalid_scope"));
    assert_eq!(scope.header("cache-control"), "no-store");

    let target = issuer
        .post_form(
            "/oauth2/token",
            &[grant, ("resource", "https://x.example")],
            basic,
        )
        .await;
    assert_eq!((target.status, target.error()), (400, "invalid_target"));

    let unknown_client = issuer
        .post_form("/oauth2/token", &[grant], Some(("c-nobody", "secret")))
        .await;
    assert_eq!(
        (unknown_client.status, unknown_client.error()),
        (401, "invalid_client")
    );
    assert!(
        unknown_client
            .header("www-authenticate")
            .starts_with("Basic")
    );
    assert_eq!(unknown_client.header("cache-control"), "no-store");

    let events = issuer.events_of(EventKind::TokenRefused).await;
    let reasons: Vec<_> = events.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "invalid_request",
            "invalid_scope",
            "invalid_target",
            "invalid_client"
        ]
    );
    issuer.stop().await;
}

both_backends!(malformed_token_requests_are_invalid_requests);
async fn malformed_token_requests_are_invalid_requests(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let (id, secret) = issuer.service_client(&["clerk"], &["payments:read"]).await;
    let form = "application/x-www-form-urlencoded";
    let credentials = format!("client_id={id}&client_secret={secret}");
    let body = |extra: &str| format!("{credentials}&{extra}").into_bytes();

    let cases: [(&str, &str, Vec<u8>); 4] = [
        (
            "json",
            "application/json",
            br#"{"grant_type":"client_credentials"}"#.to_vec(),
        ),
        (
            "repeated",
            form,
            body("grant_type=client_credentials&grant_type=client_credentials"),
        ),
        // Percent-encoded bytes that are not UTF-8.
        (
            "not utf-8",
            form,
            body("grant_type=client_credentials&scope=%FF%FE"),
        ),
        (
            "raw bytes",
            form,
            [body("grant_type=client_credentials&scope="), vec![0xff]].concat(),
        ),
    ];
    for (case, content_type, bytes) in cases {
        let reply = issuer.post_raw("/oauth2/token", content_type, bytes).await;
        assert_eq!(
            (reply.status, reply.error()),
            (400, "invalid_request"),
            "{case}"
        );
        assert_eq!(reply.header("cache-control"), "no-store", "{case}");
    }

    // Every field is bounded…
    let long_scope = "payments:read ".repeat(5 * 1024 / 14);
    let reply = issuer
        .post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials"), ("scope", &long_scope)],
            Some((&id, &secret)),
        )
        .await;
    assert_eq!((reply.status, reply.error()), (400, "invalid_request"));
    // …and so is the body.
    let padding = "x".repeat(17 * 1024);
    let reply = issuer
        .post_form(
            "/oauth2/token",
            &[("grant_type", "client_credentials"), ("padding", &padding)],
            Some((&id, &secret)),
        )
        .await;
    assert_eq!(reply.status, 413);

    // Each refusal is on record (the oversized body is refused before it is read).
    let refusals = issuer.events_of(EventKind::TokenRefused).await;
    let reasons: Vec<_> = refusals.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, ["invalid_request"; 5]);
    assert!(issuer.events_of(EventKind::TokenIssued).await.is_empty());
    assert_no_bearer_values(&issuer.events().await, &[&secret]);
    issuer.stop().await;
}
