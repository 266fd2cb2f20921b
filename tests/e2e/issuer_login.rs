//! Logins and the authorization_code grant: PKCE S256, single-use codes bound to a client
//! and redirect URI, and the TOTP step-up that admin scopes demand.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::time::Duration;

use tonic::Code;
use trias_proto::v1::revocation::Target;
use trias_proto::v1::{Decision, EventKind, LoginRequest, TokenRequest, WatchRevocationsRequest};
use trias_tests::{
    Backend, IssuerOptions, REDIRECT_URIS, assert_no_bearer_values, claims, client_credentials,
    next_revocation, refused, start_issuer,
};

const PASSWORD: &str = "correct horse battery";

both_backends!(authorization_code_with_pkce);
async fn authorization_code_with_pkce(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    let (alice, _) = issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer
        .frontend(&["payments:read", "payments:create"], false)
        .await;
    let mut grpc = issuer.grpc().await;
    let (login, verifier) = frontend.login("alice", PASSWORD, "payments:create");
    let login_time = issuer.now();
    let outcome = grpc.login(login).await.unwrap().into_inner();
    assert_eq!(outcome.acr, "pwd");
    assert_eq!(outcome.expires_in, 60);
    assert_eq!(outcome.redirect_uri, REDIRECT_URIS[0]);

    issuer.advance(5);
    let tokens = grpc
        .token(frontend.exchange(&outcome.code, &verifier))
        .await
        .unwrap()
        .into_inner();
    assert!(!tokens.refresh_token.is_empty());
    assert_eq!(tokens.scope, "payments:create");
    let claims = claims(&tokens.access_token);
    assert_eq!(claims["sub"], alice.as_str());
    assert_eq!(claims["client_id"], frontend.client_id.as_str());
    assert_eq!(claims["aud"], "payments");
    assert_eq!(claims["acr"], "pwd");
    assert_eq!(
        claims["auth_time"], login_time,
        "the time of the login, not the exchange"
    );
    assert_eq!(claims["iat"], login_time + 5);
    let sid = claims["sid"]
        .as_str()
        .expect("a refreshable token names its family");

    let events = issuer.events().await;
    let login_event = events
        .iter()
        .find(|e| e.kind() == EventKind::LoginSucceeded)
        .unwrap();
    assert_eq!(login_event.subject, alice);
    assert_eq!(login_event.client_id, frontend.client_id);
    assert_eq!(login_event.attributes["acr"], "pwd");
    let issued = events.last().unwrap();
    assert_eq!(issued.kind(), EventKind::TokenIssued);
    assert_eq!(issued.decision(), Decision::Allow);
    assert_eq!(issued.subject, alice);
    assert_eq!(issued.token_id, claims["jti"].as_str().unwrap());
    assert_eq!(issued.family_id, sid);
    assert_eq!(issued.attributes["grant_type"], "authorization_code");
    assert_eq!(issued.attributes["acr"], "pwd");
    assert_no_bearer_values(
        &events,
        &[
            PASSWORD,
            &outcome.code,
            &verifier,
            frontend.secret.as_deref().unwrap(),
            &tokens.access_token,
            &tokens.refresh_token,
        ],
    );
    issuer.stop().await;
}

both_backends!(public_client_uses_pkce_without_a_secret);
async fn public_client_uses_pkce_without_a_secret(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    issuer.user("bob", PASSWORD, &["approver"], false).await;
    let frontend = issuer.frontend(&["payments:approve"], true).await;
    assert!(frontend.secret.is_none());
    let tokens = issuer
        .sign_in(&frontend, "bob", PASSWORD, "payments:approve")
        .await;
    assert_eq!(claims(&tokens.access_token)["scope"], "payments:approve");
    assert!(!tokens.refresh_token.is_empty());

    // A public client has no secret to present: one made up is a failed authentication.
    let mut grpc = issuer.grpc().await;
    let (login, verifier) = frontend.login("bob", PASSWORD, "");
    let code = grpc.login(login).await.unwrap().into_inner().code;
    let with_secret = TokenRequest {
        client_secret: "made-up".into(),
        ..frontend.exchange(&code, &verifier)
    };
    refused(
        grpc.token(with_secret).await,
        Code::Unauthenticated,
        "invalid_client",
    );
    // And no public client may use client_credentials.
    refused(
        grpc.token(client_credentials(&frontend.client_id, "", ""))
            .await,
        Code::PermissionDenied,
        "unauthorized_client",
    );
    issuer.stop().await;
}

both_backends!(a_wrong_verifier_spends_the_code);
async fn a_wrong_verifier_spends_the_code(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer.frontend(&["payments:create"], false).await;
    let mut grpc = issuer.grpc().await;
    let (login, verifier) = frontend.login("alice", PASSWORD, "payments:create");
    let code = grpc.login(login).await.unwrap().into_inner().code;
    let (other_verifier, _) = trias_tests::pkce_pair();
    let wrong = grpc.token(frontend.exchange(&code, &other_verifier)).await;
    refused(wrong, Code::PermissionDenied, "invalid_grant");
    // A stolen code cannot be retried: even the right verifier now fails.
    let retry = grpc.token(frontend.exchange(&code, &verifier)).await;
    refused(retry, Code::PermissionDenied, "invalid_grant");

    let refusals = issuer.events_of(EventKind::TokenRefused).await;
    assert_eq!(refusals.len(), 2);
    assert!(refusals.iter().all(|e| e.reason == "invalid_grant"
        && e.client_id == frontend.client_id
        && e.attributes["grant_type"] == "authorization_code"));
    assert!(issuer.events_of(EventKind::TokenIssued).await.is_empty());
    assert_no_bearer_values(&issuer.events().await, &[&code, &verifier, &other_verifier]);
    issuer.stop().await;
}

both_backends!(a_reused_code_revokes_what_it_issued);
async fn a_reused_code_revokes_what_it_issued(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer.frontend(&["payments:create"], false).await;
    let mut grpc = issuer.grpc().await;
    let (login, verifier) = frontend.login("alice", PASSWORD, "payments:create");
    let code = grpc.login(login).await.unwrap().into_inner().code;
    let first = grpc
        .token(frontend.exchange(&code, &verifier))
        .await
        .unwrap()
        .into_inner();
    let first_claims = claims(&first.access_token);
    let sid = first_claims["sid"].as_str().unwrap();

    let replay = grpc.token(frontend.exchange(&code, &verifier)).await;
    refused(replay, Code::PermissionDenied, "invalid_grant");

    // RFC 6749 §4.1.2: what the code issued is revoked, and validators hear of it.
    let mut feed = issuer
        .grpc_as("validator")
        .await
        .watch_revocations(WatchRevocationsRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut targets = vec![
        next_revocation(&mut feed).await,
        next_revocation(&mut feed).await,
    ];
    targets.sort_by_key(|r| r.seq);
    assert!(
        targets
            .iter()
            .all(|r| r.reason == "authorization_code_replay")
    );
    let targets: Vec<_> = targets.into_iter().map(|r| r.target.unwrap()).collect();
    assert!(targets.contains(&Target::FamilyId(sid.to_owned())));
    assert!(targets.contains(&Target::TokenId(first.token_id.clone())));
    let refresh = grpc.token(frontend.refresh(&first.refresh_token)).await;
    refused(refresh, Code::PermissionDenied, "invalid_grant");

    let revoked = issuer.events_of(EventKind::TokenRevoked).await;
    assert_eq!(revoked.len(), 2);
    assert!(revoked.iter().any(|e| e.family_id == sid));
    assert!(revoked.iter().any(|e| e.token_id == first.token_id));
    assert_no_bearer_values(
        &issuer.events().await,
        &[&code, &first.access_token, &first.refresh_token],
    );
    issuer.stop().await;
}

both_backends!(a_code_expires_after_sixty_seconds);
async fn a_code_expires_after_sixty_seconds(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer.frontend(&["payments:create"], false).await;
    let mut grpc = issuer.grpc().await;
    let (login, fresh_verifier) = frontend.login("alice", PASSWORD, "");
    let fresh = grpc.login(login).await.unwrap().into_inner().code;
    let (login, stale_verifier) = frontend.login("alice", PASSWORD, "");
    let stale = grpc.login(login).await.unwrap().into_inner().code;

    issuer.advance(59);
    grpc.token(frontend.exchange(&fresh, &fresh_verifier))
        .await
        .unwrap();
    issuer.advance(1);
    let expired = grpc.token(frontend.exchange(&stale, &stale_verifier)).await;
    let status = refused(expired, Code::PermissionDenied, "invalid_grant");
    assert!(status.message().contains("expired"), "{status:?}");
    issuer.stop().await;
}

both_backends!(the_redirect_uri_must_match);
async fn the_redirect_uri_must_match(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer.frontend(&["payments:create"], false).await;
    let mut grpc = issuer.grpc().await;

    let (login, _) = frontend.login("alice", PASSWORD, "");
    let unregistered = LoginRequest {
        redirect_uri: "https://evil.example/callback".into(),
        ..login
    };
    refused(
        grpc.login(unregistered).await,
        Code::InvalidArgument,
        "invalid_request",
    );

    // Registered, but not the one the code was issued for.
    let (login, verifier) = frontend.login("alice", PASSWORD, "");
    let code = grpc.login(login).await.unwrap().into_inner().code;
    let elsewhere = TokenRequest {
        redirect_uri: REDIRECT_URIS[1].into(),
        ..frontend.exchange(&code, &verifier)
    };
    refused(
        grpc.token(elsewhere).await,
        Code::PermissionDenied,
        "invalid_grant",
    );

    let failed = issuer.events_of(EventKind::LoginFailed).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].reason, "invalid_request");
    let refused_tokens = issuer.events_of(EventKind::TokenRefused).await;
    assert_eq!(refused_tokens.len(), 1);
    assert_eq!(refused_tokens[0].reason, "invalid_grant");
    issuer.stop().await;
}

both_backends!(pkce_is_s256_only);
async fn pkce_is_s256_only(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer.frontend(&["payments:create"], true).await;
    let mut grpc = issuer.grpc().await;
    let (login, verifier) = frontend.login("alice", PASSWORD, "");
    let plain = LoginRequest {
        code_challenge: verifier.clone(),
        code_challenge_method: "plain".into(),
        ..login.clone()
    };
    let no_method = LoginRequest {
        code_challenge_method: String::new(),
        ..login.clone()
    };
    let no_challenge = LoginRequest {
        code_challenge: String::new(),
        ..login
    };
    for request in [plain, no_method, no_challenge] {
        refused(
            grpc.login(request).await,
            Code::InvalidArgument,
            "invalid_request",
        );
    }
    let failed = issuer.events_of(EventKind::LoginFailed).await;
    assert_eq!(failed.len(), 3);
    assert!(failed.iter().all(|e| e.reason == "invalid_request"));
    assert!(issuer.events_of(EventKind::LoginSucceeded).await.is_empty());
    issuer.stop().await;
}

both_backends!(failed_logins_do_not_say_why);
async fn failed_logins_do_not_say_why(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer.frontend(&["payments:create"], false).await;
    let mut grpc = issuer.grpc().await;
    let (wrong_password, _) = frontend.login("alice", "tr0ub4dor&3", "");
    let (unknown_user, _) = frontend.login("mallory", PASSWORD, "");
    let wrong_password = refused(
        grpc.login(wrong_password).await,
        Code::Unauthenticated,
        "access_denied",
    );
    let unknown_user = refused(
        grpc.login(unknown_user).await,
        Code::Unauthenticated,
        "access_denied",
    );
    assert_eq!(wrong_password.message(), unknown_user.message());

    let failed = issuer.events_of(EventKind::LoginFailed).await;
    let usernames: Vec<_> = failed
        .iter()
        .map(|e| e.attributes["username"].as_str())
        .collect();
    assert_eq!(usernames, ["alice", "mallory"]);
    assert!(failed.iter().all(|e| e.decision() == Decision::Deny
        && e.reason == "access_denied"
        && e.client_id == frontend.client_id));
    assert_no_bearer_values(&issuer.events().await, &[PASSWORD, "tr0ub4dor&3"]);
    issuer.stop().await;
}

both_backends!(no_password_or_implicit_grant);
async fn no_password_or_implicit_grant(backend: Backend) {
    let Some(issuer) = start_issuer(IssuerOptions::on(backend)).await else {
        return;
    };
    issuer.user("alice", PASSWORD, &["clerk"], false).await;
    let frontend = issuer.frontend(&["payments:create"], false).await;
    let secret = frontend.secret.as_deref().unwrap();
    // RFC 9700 §2.4: the resource owner password credentials grant must not be used.
    for grant in ["password", "implicit", "token"] {
        let reply = issuer
            .post_form(
                "/oauth2/token",
                &[
                    ("grant_type", grant),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
                Some((&frontend.client_id, secret)),
            )
            .await;
        assert_eq!(
            (reply.status, reply.error()),
            (400, "unsupported_grant_type"),
            "{grant}"
        );
    }
    let mut grpc = issuer.grpc().await;
    let unknown = TokenRequest {
        grant_type: 99,
        ..frontend.refresh("x")
    };
    refused(
        grpc.token(unknown).await,
        Code::InvalidArgument,
        "unsupported_grant_type",
    );
    let refusals = issuer.events_of(EventKind::TokenRefused).await;
    assert_eq!(refusals.len(), 4);
    assert!(
        refusals
            .iter()
            .all(|e| e.reason == "unsupported_grant_type")
    );
    assert!(issuer.events_of(EventKind::TokenIssued).await.is_empty());
    assert_no_bearer_values(&issuer.events().await, &[PASSWORD, secret]);
    issuer.stop().await;
}

both_backends!(admin_scopes_need_a_second_factor);
async fn admin_scopes_need_a_second_factor(backend: Backend) {
    let options = IssuerOptions {
        // Longer than the admin scopes' max_ttl, so that the cap shows.
        access_token_ttl: Duration::from_secs(600),
        ..IssuerOptions::on(backend)
    };
    let Some(issuer) = start_issuer(options).await else {
        return;
    };
    let admin = issuer.admin("root").await;
    let mut grpc = issuer.grpc().await;
    let (login, verifier) = admin
        .frontend
        .login(&admin.username, &admin.password, "admin:keys");
    let login = LoginRequest {
        resource: "issuer-admin".into(),
        ..login
    };

    let without_totp = grpc.login(login.clone()).await;
    refused(without_totp, Code::FailedPrecondition, "mfa_required");
    let wrong_totp = LoginRequest {
        totp: wrong_code(&issuer.totp(&admin.totp_secret)),
        ..login.clone()
    };
    refused(
        grpc.login(wrong_totp).await,
        Code::Unauthenticated,
        "access_denied",
    );

    let totp = issuer.totp(&admin.totp_secret);
    let with_totp = LoginRequest {
        totp: totp.clone(),
        ..login
    };
    let outcome = grpc.login(with_totp).await.unwrap().into_inner();
    assert_eq!(outcome.acr, "mfa");
    let tokens = grpc
        .token(admin.frontend.exchange(&outcome.code, &verifier))
        .await
        .unwrap()
        .into_inner();
    assert!(
        tokens.refresh_token.is_empty(),
        "the policy allows no refresh for admin scopes"
    );
    let claims = claims(&tokens.access_token);
    assert_eq!(claims["acr"], "mfa");
    assert_eq!(claims["aud"], "issuer-admin");
    assert_eq!(claims["scope"], "admin:keys");
    assert!(claims.get("sid").is_none());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );
    assert_eq!(tokens.expires_in, 300);

    // The same admin's role cannot reach admin scopes through client_credentials: a client
    // holding the admin role is refused by the grant-type rule.
    let (service, secret) = issuer.service_client(&["admin"], &["admin:keys"]).await;
    let request = TokenRequest {
        resource: "issuer-admin".into(),
        ..client_credentials(&service, &secret, "admin:keys")
    };
    let status = refused(
        grpc.token(request).await,
        Code::InvalidArgument,
        "invalid_scope",
    );
    assert!(
        status.message().contains("authorization_code"),
        "{status:?}"
    );
    // Ordinary scopes still get the configured lifetime.
    let (clerk, clerk_secret) = issuer.service_client(&["clerk"], &["payments:read"]).await;
    let ordinary = grpc
        .token(client_credentials(&clerk, &clerk_secret, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ordinary.expires_in, 600);

    let failed: Vec<_> = issuer
        .events_of(EventKind::LoginFailed)
        .await
        .into_iter()
        .map(|e| (e.reason, e.attributes["username"].clone()))
        .collect();
    assert_eq!(
        failed,
        [
            ("mfa_required".to_owned(), "root".to_owned()),
            ("access_denied".to_owned(), "root".to_owned()),
        ]
    );
    let logins = issuer.events_of(EventKind::LoginSucceeded).await;
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].subject, admin.user_id);
    assert_eq!(logins[0].attributes["acr"], "mfa");
    let refusal = issuer.events_of(EventKind::TokenRefused).await;
    assert_eq!(refusal.len(), 1);
    assert_eq!(
        (refusal[0].reason.as_str(), refusal[0].client_id.as_str()),
        ("invalid_scope", service.as_str())
    );
    assert_no_bearer_values(
        &issuer.events().await,
        &[
            &admin.password,
            &admin.totp_secret,
            &tokens.access_token,
            &outcome.code,
        ],
    );
    issuer.stop().await;
}

/// A six-digit code that is not `code`.
pub(crate) fn wrong_code(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 500_000) % 1_000_000)
}
