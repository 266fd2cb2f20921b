//! The client_credentials grant over gRPC and HTTP, and the RFC 9068 access tokens it mints.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tonic::Code;
use trias_proto::v1::{Decision, EventKind, GetJwksRequest, TokenRequest};
use trias_runtime::clock::Clock as _;
use trias_tests::{
    Backend, IssuerOptions, assert_no_bearer_values, claims, client_credentials, jwt_parts,
    refused, start_issuer,
};

use crate::jwt;

both_backends!(client_credentials_over_grpc);
async fn client_credentials_over_grpc(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let (id, secret) = issuer
        .service_client(&["clerk"], &["payments:read", "payments:create"])
        .await;
    let mut grpc = issuer.grpc().await;
    let response = grpc
        .token(client_credentials(&id, &secret, "payments:create"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.token_type, "Bearer");
    assert_eq!(response.audience, "payments");
    assert_eq!(response.scope, "payments:create");
    assert_eq!(response.expires_in, 300);
    assert!(
        response.refresh_token.is_empty(),
        "client_credentials never refreshes"
    );

    // RFC 9068 §2.1: the header, with a key the JWKS publishes.
    let (header, claims) = jwt_parts(&response.access_token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    let jwks = grpc.get_jwks(GetJwksRequest {}).await.unwrap().into_inner();
    assert!(jwks.keys.iter().any(|k| header["kid"] == k.kid.as_str()));

    // RFC 9068 §2.2: the claims.
    let now = issuer.now();
    assert_eq!(claims["iss"], issuer.http_base());
    assert_eq!(claims["sub"], id.as_str());
    assert_eq!(claims["aud"], "payments", "aud is exactly one string");
    assert_eq!(claims["client_id"], id.as_str());
    assert_eq!(claims["scope"], "payments:create");
    assert_eq!(claims["iat"], now);
    assert_eq!(claims["exp"], now + 300);
    assert_eq!(claims["jti"], response.token_id.as_str());
    // Time-ordered (trias_runtime::id): the time it was minted, in ms, then 80 random bits.
    let millis = issuer
        .clock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert_eq!(response.token_id[..12], format!("{millis:012x}"));
    assert_eq!(response.token_id.len(), 32);
    assert!(claims.get("acr").is_none() && claims.get("sid").is_none());

    let wrong = grpc
        .token(client_credentials(&id, "not-the-secret", "payments:create"))
        .await;
    refused(wrong, Code::Unauthenticated, "invalid_client");

    let events = issuer.events().await;
    let issued: Vec<_> = events
        .iter()
        .filter(|e| e.kind() == EventKind::TokenIssued)
        .collect();
    assert_eq!(issued.len(), 1);
    let event = issued[0];
    assert_eq!(event.decision(), Decision::Allow);
    assert_eq!(
        (event.subject.as_str(), event.client_id.as_str()),
        (id.as_str(), id.as_str())
    );
    assert_eq!(event.token_id, response.token_id);
    assert_eq!(event.audience, "payments");
    assert_eq!(event.attributes["grant_type"], "client_credentials");
    assert_eq!(event.attributes["kid"], header["kid"].as_str().unwrap());
    let refusal = events.last().unwrap();
    assert_eq!(refusal.kind(), EventKind::TokenRefused);
    assert_eq!(refusal.decision(), Decision::Deny);
    assert_eq!(refusal.reason, "invalid_client");
    assert_eq!(refusal.client_id, id);
    assert_no_bearer_values(
        &events,
        &[&secret, "not-the-secret", &response.access_token],
    );
    issuer.stop().await;
}

both_backends!(client_credentials_over_http);
async fn client_credentials_over_http(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let (id, secret) = issuer
        .service_client(&["clerk"], &["payments:read", "payments:create"])
        .await;
    let grant = ("grant_type", "client_credentials");

    // RFC 6749 §2.3.1: HTTP Basic…
    let basic = issuer
        .post_form(
            "/oauth2/token",
            &[grant, ("scope", "payments:read")],
            Some((&id, &secret)),
        )
        .await;
    assert_eq!(basic.status, 200, "{:?}", basic.body);
    assert_eq!(basic.header("cache-control"), "no-store");
    assert_eq!(basic.body["token_type"], "Bearer");
    assert_eq!(basic.body["expires_in"], 300);
    assert_eq!(basic.body["scope"], "payments:read");
    assert!(basic.body.get("refresh_token").is_none());
    let token = basic.body["access_token"].as_str().unwrap();
    assert_eq!(claims(token)["sub"], id.as_str());
    assert_eq!(claims(token)["iss"], issuer.http_base());

    // …or the body…
    let body = issuer
        .post_form(
            "/oauth2/token",
            &[grant, ("client_id", &id), ("client_secret", &secret)],
            None,
        )
        .await;
    assert_eq!(body.status, 200, "{:?}", body.body);
    assert_eq!(body.body["scope"], "payments:create payments:read");

    // …but never both at once.
    let both = issuer
        .post_form(
            "/oauth2/token",
            &[grant, ("client_id", &id), ("client_secret", &secret)],
            Some((&id, &secret)),
        )
        .await;
    assert_eq!((both.status, both.error()), (400, "invalid_request"));

    // A wrong secret: 401, and the Basic challenge when Basic was tried (RFC 6749 §5.2).
    let wrong = issuer
        .post_form("/oauth2/token", &[grant], Some((&id, "wrong-secret")))
        .await;
    assert_eq!((wrong.status, wrong.error()), (401, "invalid_client"));
    assert!(wrong.header("www-authenticate").starts_with("Basic"));
    let wrong = issuer
        .post_form(
            "/oauth2/token",
            &[grant, ("client_id", &id), ("client_secret", "wrong-secret")],
            None,
        )
        .await;
    assert_eq!((wrong.status, wrong.error()), (401, "invalid_client"));

    let events = issuer.events().await;
    let kinds: Vec<_> = events
        .iter()
        .filter(|e| {
            e.kind() != EventKind::RoleGrantApproved && e.kind() != EventKind::ClientRegistered
        })
        .map(|e| (e.kind(), e.reason.as_str(), e.client_id.as_str()))
        .collect();
    // The request that authenticated twice was refused before its client was known.
    assert_eq!(
        kinds,
        [
            (EventKind::TokenIssued, "", id.as_str()),
            (EventKind::TokenIssued, "", id.as_str()),
            (EventKind::TokenRefused, "invalid_request", ""),
            (EventKind::TokenRefused, "invalid_client", id.as_str()),
            (EventKind::TokenRefused, "invalid_client", id.as_str()),
        ]
    );
    assert_no_bearer_values(
        &events,
        &[
            &secret,
            "wrong-secret",
            token,
            body.body["access_token"].as_str().unwrap(),
        ],
    );
    issuer.stop().await;
}

both_backends!(audience_follows_the_resource_indicator);
async fn audience_follows_the_resource_indicator(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let scopes = ["payments:read", "payments:create", "audit:read"];
    let (id, secret) = issuer
        .service_client(&["clerk", "security-analyst"], &scopes)
        .await;
    let mut grpc = issuer.grpc().await;
    let mut jtis = BTreeSet::new();
    // RFC 8707: the resource URI or the audience id selects the audience; none, the default.
    for (resource, audience, scope) in [
        ("", "payments", "payments:create payments:read"),
        (
            "https://payments.example",
            "payments",
            "payments:create payments:read",
        ),
        ("payments", "payments", "payments:create payments:read"),
        ("auditor", "auditor", "audit:read"),
    ] {
        let request = TokenRequest {
            resource: resource.into(),
            ..client_credentials(&id, &secret, "")
        };
        let response = grpc.token(request).await.unwrap().into_inner();
        let claims = claims(&response.access_token);
        assert_eq!(claims["aud"], json!(audience), "resource {resource:?}");
        assert_eq!(claims["scope"], scope, "resource {resource:?}");
        assert_eq!(response.audience, audience);
        jtis.insert(claims["jti"].as_str().unwrap().to_owned());
    }
    assert_eq!(jtis.len(), 4, "every token has its own jti");

    let unknown_resource = TokenRequest {
        resource: "https://elsewhere.example".into(),
        ..client_credentials(&id, &secret, "")
    };
    refused(
        grpc.token(unknown_resource).await,
        Code::InvalidArgument,
        "invalid_target",
    );
    let unknown_scope = client_credentials(&id, &secret, "payments:delete");
    refused(
        grpc.token(unknown_scope).await,
        Code::InvalidArgument,
        "invalid_scope",
    );
    // A scope the policy knows but the client's roles do not grant.
    let not_granted = client_credentials(&id, &secret, "payments:approve");
    refused(
        grpc.token(not_granted).await,
        Code::InvalidArgument,
        "invalid_scope",
    );

    let refusals: Vec<_> = issuer
        .events_of(EventKind::TokenRefused)
        .await
        .into_iter()
        .map(|e| (e.reason, e.client_id))
        .collect();
    assert_eq!(
        refusals,
        [
            ("invalid_target".to_owned(), id.clone()),
            ("invalid_scope".to_owned(), id.clone()),
            ("invalid_scope".to_owned(), id.clone()),
        ]
    );
    assert_eq!(issuer.events_of(EventKind::TokenIssued).await.len(), 4);
    issuer.stop().await;
}

both_backends!(tokens_verify_against_the_published_jwks);
async fn tokens_verify_against_the_published_jwks(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let (id, secret) = issuer
        .service_client(&["treasurer"], &["payments:execute"])
        .await;
    let mut grpc = issuer.grpc().await;
    let token = grpc
        .token(client_credentials(&id, &secret, "payments:execute"))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let jwks = issuer.get("/.well-known/jwks.json").await.body;
    let iss = issuer.http_base();

    let verified = jwt::verify(&token, &jwks, &iss, "payments").unwrap();
    assert_eq!(verified["sub"], id.as_str());
    assert_eq!(verified["scope"], "payments:execute");

    // A resource server refuses a token for another audience or issuer…
    assert!(jwt::verify(&token, &jwks, &iss, "auditor").is_err());
    assert!(jwt::verify(&token, &jwks, "https://evil.example", "payments").is_err());
    // …and any change to the signed content.
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged: Value = claims(&token);
    forged["scope"] = json!("payments:execute payments:approve");
    let forged_payload = data_encoding::BASE64URL_NOPAD.encode(forged.to_string().as_bytes());
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    let error = jwt::verify(&forged, &jwks, &iss, "payments").unwrap_err();
    assert!(error.contains("InvalidSignature"), "{error}");
    issuer.stop().await;
}
