//! Fuzzes the issuer's HTTP form handling (`trias_issuer::http`): the
//! `application/x-www-form-urlencoded` parser the token, revocation and login endpoints use,
//! the same parser on a URL query, and the client credentials read from HTTP Basic and the
//! form, on any headers and body.
//!
//! Invariants: nothing panics; a body that is not UTF-8 or not declared a form is refused; a
//! parsed form has no empty value, reads the same as a query, and reads the same again once
//! re-encoded; Basic credentials encoded as RFC 6749 §2.3.1 says come back unchanged.

#![no_main]

use std::collections::BTreeMap;
use std::collections::HashMap;

use arbitrary::Arbitrary;
use axum::http::{HeaderMap, HeaderValue, header};
use data_encoding::BASE64;
use libfuzzer_sys::fuzz_target;
use trias_issuer::http::fuzzing::{client, parse_form, parse_query};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    content_type: ContentType<'a>,
    authorization: Option<Authorization<'a>>,
    body: &'a [u8],
}

#[derive(Debug, Arbitrary)]
enum ContentType<'a> {
    Form,
    /// With parameters and in another case, which are allowed.
    FormWithCharset,
    Missing,
    Raw(&'a [u8]),
}

#[derive(Debug, Arbitrary)]
enum Authorization<'a> {
    /// A client id and secret, form-encoded then base64, as RFC 6749 §2.3.1 asks.
    Basic {
        id: &'a str,
        secret: &'a str,
    },
    Raw(&'a [u8]),
}

fn form_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn sorted(map: &HashMap<String, String>) -> BTreeMap<&str, &str> {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fuzz_target!(|input: Input<'_>| {
    let mut headers = HeaderMap::new();
    let is_form = match input.content_type {
        ContentType::Form => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            true
        }
        ContentType::FormWithCharset => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("Application/X-WWW-Form-URLEncoded; charset=UTF-8"),
            );
            true
        }
        ContentType::Missing => false,
        ContentType::Raw(raw) => {
            let Ok(value) = HeaderValue::from_bytes(raw) else {
                return;
            };
            headers.insert(header::CONTENT_TYPE, value);
            // Whether a raw header declares a form is the parser's own call; not checked.
            let media = std::str::from_utf8(raw)
                .ok()
                .and_then(|t| t.split(';').next())
                .map(str::trim);
            media.is_some_and(|m| m.eq_ignore_ascii_case("application/x-www-form-urlencoded"))
        }
    };
    let basic = match &input.authorization {
        None => None,
        Some(Authorization::Basic { id, secret }) => {
            let encoded =
                BASE64.encode(format!("{}:{}", form_encode(id), form_encode(secret)).as_bytes());
            let value = HeaderValue::from_str(&format!("Basic {encoded}"))
                .expect("base64 is a valid header");
            headers.insert(header::AUTHORIZATION, value);
            Some((*id, *secret))
        }
        Some(Authorization::Raw(raw)) => {
            let Ok(value) = HeaderValue::from_bytes(raw) else {
                return;
            };
            headers.insert(header::AUTHORIZATION, value);
            None
        }
    };

    let parsed = parse_form(&headers, input.body);
    let text = std::str::from_utf8(input.body);
    if !is_form || text.is_err() {
        assert!(
            parsed.is_err(),
            "accepted a body that is not a UTF-8 form: {parsed:?}"
        );
    }
    let Ok(mut form) = parsed else {
        return;
    };
    let text = text.expect("a parsed body is UTF-8");
    assert!(
        form.values().all(|v| !v.is_empty()),
        "an empty value is kept: {form:?}"
    );
    let query = parse_query(text).expect("a form body parses as a query");
    assert_eq!(sorted(&query), sorted(&form));
    let reencoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(sorted(&form))
        .finish();
    let again = parse_form(&headers, reencoded.as_bytes()).expect("a re-encoded form parses");
    assert_eq!(sorted(&again), sorted(&form), "re-encoded as {reencoded:?}");

    let body_secret = form.contains_key("client_secret");
    let body_id = form.get("client_id").cloned();
    let credentials = client(&headers, &mut form);
    assert!(!form.contains_key("client_id") && !form.contains_key("client_secret"));
    if let (Some((id, secret)), false) = (basic, body_secret)
        && body_id.as_deref().is_none_or(|b| b == id)
    {
        assert_eq!(
            credentials.expect("well-formed Basic credentials are read"),
            (id.to_owned(), Some(secret.to_owned()), true)
        );
    }
});
