//! Signing-key rotation: a new key is published before it signs, and a retired key stays
//! published until every token it signed has expired.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use serde_json::Value;
use trias_proto::v1::{
    EventKind, GetJwksRequest, KeyAlgorithm, ListKeysRequest, RotateKeysRequest,
};
use trias_tests::{
    Backend, IssuerHandle, IssuerOptions, client_credentials, jwt_parts, start_issuer, with_bearer,
};

use crate::jwt;

/// A fresh token from a payments client, as a resource server would receive it.
async fn mint(issuer: &IssuerHandle, client: &(String, String)) -> String {
    let mut grpc = issuer.grpc().await;
    grpc.token(client_credentials(&client.0, &client.1, ""))
        .await
        .unwrap()
        .into_inner()
        .access_token
}

fn kid(token: &str) -> String {
    jwt_parts(token).0["kid"].as_str().unwrap().to_owned()
}

/// The kids of the JWKS, over gRPC and over HTTP, which must agree.
async fn published(issuer: &IssuerHandle) -> Vec<String> {
    let mut grpc = issuer.grpc().await;
    let over_grpc: Vec<String> = grpc
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    let over_http: Vec<String> = http_jwks(issuer).await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(over_grpc, over_http);
    over_grpc
}

async fn http_jwks(issuer: &IssuerHandle) -> Value {
    issuer.get("/.well-known/jwks.json").await.body
}

both_backends!(a_new_key_is_published_before_it_signs);
async fn a_new_key_is_published_before_it_signs(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let client = issuer.service_client(&["clerk"], &["payments:read"]).await;
    let admin = issuer.admin("root").await;
    let admin_token = issuer.admin_token(&admin, "admin:keys").await;
    let old_kid = kid(&mint(&issuer, &client).await);
    assert_eq!(published(&issuer).await, [old_kid.as_str()]);

    let mut grpc = issuer.grpc().await;
    let t0 = issuer.now();
    let key = grpc
        .rotate_keys(with_bearer(RotateKeysRequest::default(), &admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(key.algorithm(), KeyAlgorithm::Eddsa);
    assert_eq!(key.published_at.unwrap().seconds, t0);
    assert_eq!(key.activates_at.unwrap().seconds, t0 + 60);
    let new_kid = key.kid;
    assert!(
        published(&issuer).await.contains(&new_kid),
        "published at once"
    );

    // Validators get a publish delay to fetch the new key before tokens carry it.
    issuer.advance(59);
    let before = mint(&issuer, &client).await;
    assert_eq!(kid(&before), old_kid);
    issuer.advance(1);
    let after = mint(&issuer, &client).await;
    assert_eq!(kid(&after), new_kid);

    let (iss, jwks) = (issuer.http_base(), http_jwks(&issuer).await);
    jwt::verify(&before, &jwks, &iss, "payments").unwrap();
    jwt::verify(&after, &jwks, &iss, "payments").unwrap();
    // The admin token, signed by the retired key, still works while that key is published.
    let keys = grpc
        .list_keys(with_bearer(ListKeysRequest {}, &admin_token))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let old = keys.iter().find(|k| k.kid == old_kid).unwrap();
    assert_eq!(old.retires_at.unwrap().seconds, t0 + 60);
    assert_eq!(old.unpublished_at.unwrap().seconds, t0 + 60 + 300 + 60);

    // The retired key stays published for a token lifetime plus a minute of clock skew.
    issuer.advance(300 + 59);
    assert_eq!(published(&issuer).await, [old_kid.clone(), new_kid.clone()]);
    jwt::verify(&before, &http_jwks(&issuer).await, &iss, "payments").unwrap();
    issuer.advance(1);
    assert_eq!(published(&issuer).await, [new_kid.as_str()]);
    let error = jwt::verify(&before, &http_jwks(&issuer).await, &iss, "payments").unwrap_err();
    assert!(error.contains("kid not in the JWKS"), "{error}");

    let created = issuer.events_of(EventKind::KeyCreated).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].subject, admin.user_id);
    assert_eq!(created[0].attributes["kid"], new_kid);
    assert_eq!(created[0].attributes["algorithm"], "EdDSA");
    assert_eq!(created[0].attributes["activates_at"], (t0 + 60).to_string());
    let kids: Vec<_> = issuer
        .events_of(EventKind::TokenIssued)
        .await
        .into_iter()
        .filter(|e| e.subject == client.0)
        .map(|e| e.attributes["kid"].clone())
        .collect();
    assert_eq!(kids, [old_kid.clone(), old_kid, new_kid]);
    issuer.stop().await;
}

both_backends!(rotation_to_es256);
async fn rotation_to_es256(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let client = issuer.service_client(&["clerk"], &["payments:read"]).await;
    let admin = issuer.admin("root").await;
    let admin_token = issuer.admin_token(&admin, "admin:keys").await;
    let eddsa_token = mint(&issuer, &client).await;
    let mut grpc = issuer.grpc().await;
    let request = RotateKeysRequest {
        algorithm: KeyAlgorithm::Es256 as i32,
    };
    let key = grpc
        .rotate_keys(with_bearer(request, &admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(key.algorithm(), KeyAlgorithm::Es256);

    issuer.advance(60);
    let es256_token = mint(&issuer, &client).await;
    let (header, _) = jwt_parts(&es256_token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["kid"], key.kid.as_str());

    let jwks = http_jwks(&issuer).await;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == key.kid.as_str())
        .unwrap();
    assert_eq!(
        (&jwk["kty"], &jwk["crv"], &jwk["alg"]),
        (&"EC".into(), &"P-256".into(), &"ES256".into())
    );
    assert!(jwk.get("d").is_none());
    let iss = issuer.http_base();
    let verified = jwt::verify(&es256_token, &jwks, &iss, "payments").unwrap();
    assert_eq!(verified["sub"], client.0.as_str());
    jwt::verify(&eddsa_token, &jwks, &iss, "payments").unwrap();
    issuer.stop().await;
}
