#!/usr/bin/env python3
"""Writes the token attack corpus: one JSON file per case under tests/corpus/tokens/.

Run it from anywhere with `python3 tests/corpus/generate.py`; it deletes and rewrites every
case file, so the directory always holds exactly the cases listed here. The end-to-end test
`corpus` (tests/e2e/corpus.rs) reads the files, builds each token against a running issuer
and validator, and checks the validator's gRPC `Check` and its RFC 7662 introspection both
decide the case as `expect` says.

A case describes a token rather than holding one, because the interesting forgeries need the
running issuer's own keys and clock:

  header / claims        a JSON value; strings are templates (see below)
  header_text /          raw JSON text instead, for what a JSON value cannot express
  claims_text            (duplicate names, a byte-order mark, deep nesting)
  key                    what signs `base64url(header).base64url(claims)`:
                           issuer        the issuer's EdDSA key (kid $kid)
                           issuer_es256  the issuer's ES256 key (kid $kid_es256)
                           attacker      an Ed25519 key the issuer never saw
                           hmac_x        HMAC (the header's HS* alg) keyed with the issuer's
                                         public key as its JWK `x` text
                           hmac_raw      HMAC keyed with the public key's raw bytes
                           none          an empty signature
                           junk          64 bytes of 0x07
  then                   transforms applied to the signed token, in order (see corpus.rs)
  token_text             a whole token instead of header/claims/key (templates apply)
  expect                 the reason code both answers must give, or "allow" for the
                         control cases that sit just inside a limit
  expect_introspection   where introspection answers otherwise: the OAuth error of its
                         400 reply (an empty token is a request without one, RFC 7662 §2.1),
                         or "allow" where only the action's scope is wrong

Templates: `$kid`, `$kid_es256`, `$iss`, `$aud`, `$sub`, `$client`, `$jti` and `$scope`
are replaced inside strings; a string that is exactly `$now`, `$now+N` or `$now-N` becomes
that number of seconds on the issuer's clock. In *_text fields a quoted `"$now+N"` becomes
the bare number.
"""

import json
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tokens")

HEADER = {"alg": "EdDSA", "typ": "at+jwt", "kid": "$kid"}
HEADER_ES = {"alg": "ES256", "typ": "at+jwt", "kid": "$kid_es256"}
CLAIMS = {
    "iss": "$iss",
    "sub": "$sub",
    "aud": "$aud",
    "client_id": "$client",
    "scope": "$scope",
    "iat": "$now",
    "exp": "$now+300",
    "jti": "$jti",
}

CASES = []


def case(name, expect, about, **fields):
    fields.setdefault("key", "issuer")
    if "token_text" not in fields:
        if "header_text" not in fields:
            fields.setdefault("header", HEADER)
        if "claims_text" not in fields:
            fields.setdefault("claims", CLAIMS)
    CASES.append((name, dict(about=about, expect=expect, **fields)))


def changed(base, changes):
    """`base` with each change made; a change to None removes the member."""
    out = dict(base)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def header(**changes):
    return changed(HEADER, changes)


def claims(**changes):
    return changed(CLAIMS, changes)


# ----- controls: the genuine token, and each limit from its inside -----
case("control-genuine", "allow", "a token shaped like the issuer's own, signed by its key")
case("control-es256", "allow", "the same, signed by the issuer's ES256 key",
     header=HEADER_ES, key="issuer_es256")
case("control-typ-media-type", "allow", "typ as a full media type, in capitals",
     header=header(typ="application/AT+JWT"))
case("control-exp-inside-skew", "allow", "expired 4 s ago, inside the 5 s skew",
     claims=claims(exp="$now-4"))
case("control-nbf-inside-skew", "allow", "valid from 4 s ahead, inside the skew",
     claims=claims(nbf="$now+4"))
case("control-iat-inside-skew", "allow", "issued 4 s ahead, inside the skew",
     claims=claims(iat="$now+4"))

# ----- alg none in every spelling, with and without a signature -----
for slug, spelling in [("none", "none"), ("none-title", "None"), ("none-upper", "NONE"),
                      ("none-mixed", "nOnE"), ("none-leading-space", " none"),
                      ("none-trailing-space", "none "), ("none-nul", "none\u0000")]:
    for key in ["none", "junk"]:
        case(f"alg-{slug}-{key}-signature", "unsupported_algorithm",
             f"alg {spelling!r}, {'no' if key == 'none' else 'a junk'} signature",
             header=header(alg=spelling), key=key)
case("alg-empty", "unsupported_algorithm", "alg is the empty string", header=header(alg=""))
case("alg-missing", "malformed", "the header has no alg", header=header(alg=None))
case("alg-null", "malformed", "alg is null", header=dict(HEADER, alg=None))
case("alg-array", "malformed", "alg is an array", header=header(alg=["EdDSA"]))

# ----- HMAC keyed with the issuer's public key (key confusion) -----
for alg in ["HS256", "HS384", "HS512"]:
    for key in ["hmac_x", "hmac_raw"]:
        case(f"hmac-{alg.lower()}-{key.replace('_', '-')}", "unsupported_algorithm",
             f"{alg} keyed with the public key ({'JWK x text' if key == 'hmac_x' else 'raw bytes'})",
             header=header(alg=alg), key=key)

# ----- an algorithm not bound to the key -----
case("alg-es256-on-eddsa-key", "unsupported_algorithm",
     "header says ES256, names the EdDSA key, signed by the ES256 key",
     header=header(alg="ES256"), key="issuer_es256")
case("alg-eddsa-on-es256-key", "unsupported_algorithm",
     "header says EdDSA, names the ES256 key, signed by the EdDSA key",
     header=dict(HEADER_ES, alg="EdDSA"), key="issuer")
for alg in ["RS256", "PS256", "ES384", "ES512", "Ed25519", "eddsa"]:
    case(f"alg-{alg.lower()}", "unsupported_algorithm", f"alg {alg}, which no key has",
         header=header(alg=alg))

# ----- keys embedded in or pointed to by the header: never used -----
ATTACKER_JWK = {"kty": "OKP", "crv": "Ed25519", "x": "$attacker_x"}
for member, value in [
    ("jwk", ATTACKER_JWK),
    ("jku", "https://attacker.example/jwks.json"),
    ("x5u", "https://attacker.example/cert.pem"),
    ("x5c", ["MIIBszCCAVmgAwIBAgIUattacker"]),
]:
    case(f"embedded-{member}-real-kid", "bad_signature",
         f"{member} in the header, the issuer's kid, signed by the attacker",
         header=header(**{member: value}), key="attacker")
    case(f"embedded-{member}-no-kid", "unknown_key",
         f"{member} in the header and no kid, signed by the attacker",
         header=header(kid=None, **{member: value}), key="attacker")
case("attacker-key-own-kid", "unknown_key", "the attacker's key under a made-up kid",
     header=header(kid="attacker-key"), key="attacker")
case("attacker-key-real-kid", "bad_signature", "the attacker's key under the issuer's kid",
     key="attacker")

# ----- kid injection -----
for slug, kid in [
    ("path", "../../../../etc/passwd"),
    ("path-after-kid", "$kid/../../../etc/passwd"),
    ("sql", "' OR '1'='1"),
    ("sql-union", "x' UNION SELECT private_pkcs8 FROM signing_keys --"),
    ("nul", "$kid\u0000"),
    ("nul-only", "\u0000"),
    ("unicode-homoglyph", "$kid\u200b"),
    ("unicode-rtl", "\u202e$kid"),
    ("unicode-fullwidth", "\uff4b\uff49\uff44"),
    ("5kb", "k" * 5000),
    ("empty", ""),
]:
    case(f"kid-{slug}", "unknown_key", f"kid {slug}", header=header(kid=kid))
case("kid-10kb", "token_too_large", "a 10 KB kid: over the size cap before anything is parsed",
     header=header(kid="k" * 10240))
case("kid-missing", "unknown_key", "no kid at all", header=header(kid=None))
case("kid-number", "malformed", "kid is a number", header=header(kid=7))
case("kid-object", "malformed", "kid is an object", header=header(kid={"$ne": None}))

# ----- crit -----
for slug, crit in [
    ("exp", ["exp"]),
    ("b64", ["b64"]),
    ("unknown", ["urn:attacker:ext"]),
    ("empty-list", []),
    ("string", "exp"),
    ("null", None),
    ("number", 1),
]:
    h = dict(HEADER)
    h["crit"] = crit
    if slug in ("exp", "b64", "unknown"):
        h[crit[0]] = False
    case(f"crit-{slug}", "unknown_critical", f"crit {json.dumps(crit)}", header=h)

# ----- typ -----
for slug, typ in [("jwt", "JWT"), ("jwt-lower", "jwt"), ("at-jwt-space", "at+jwt "),
                  ("jose", "JOSE"), ("id-token", "id_token+jwt"), ("empty", "")]:
    case(f"typ-{slug}", "wrong_type", f"typ {typ!r}", header=header(typ=typ))
case("typ-missing", "wrong_type", "no typ", header=header(typ=None))
case("typ-number", "malformed", "typ is a number", header=header(typ=1))

# ----- time claims on each side of the skew (5 s) -----
case("exp-outside-skew", "expired", "expired 6 s ago", claims=claims(exp="$now-6"))
case("exp-at-skew", "expired", "expired exactly 5 s ago", claims=claims(exp="$now-5"))
case("exp-long-ago", "expired", "expired in 1970", claims=claims(exp=1))
case("nbf-outside-skew", "not_yet_valid", "valid from 6 s ahead", claims=claims(nbf="$now+6"))
case("iat-outside-skew", "not_yet_valid", "issued 6 s ahead", claims=claims(iat="$now+6"))
case("iat-far-future", "not_yet_valid", "issued in the year 5138",
     claims=claims(iat=99999999999, exp=99999999999 + 300))

# ----- iss and aud -----
for slug, iss in [("other", "https://attacker.example"), ("trailing-slash", "$iss/"),
                  ("case", "$ISS"), ("prefix", "$iss.attacker.example")]:
    case(f"iss-{slug}", "wrong_issuer", f"iss {slug}", claims=claims(iss=iss))
case("iss-missing", "missing_claim", "no iss", claims=claims(iss=None))
case("iss-number", "missing_claim", "iss is a number", claims=claims(iss=1))
for slug, aud in [("other", "reports"), ("two", ["$aud", "reports"]), ("empty", ""),
                  ("case", "PAYMENTS"), ("empty-list", [])]:
    case(f"aud-{slug}", "wrong_audience", f"aud {json.dumps(aud)}", claims=claims(aud=aud))
case("aud-missing", "missing_claim", "no aud", claims=claims(aud=None))
case("aud-number", "missing_claim", "aud is a number", claims=claims(aud=1))
case("aud-list-of-number", "missing_claim", "aud is [1]", claims=claims(aud=[1]))

# ----- required claims missing or of the wrong type -----
for claim in ["exp", "sub", "client_id", "iat", "jti"]:
    case(f"claim-{claim.replace('_', '-')}-missing", "missing_claim", f"no {claim}",
         claims=claims(**{claim: None}))
for claim, value in [("exp", "9999999999"), ("exp", True), ("iat", "0"), ("iat", [1]),
                     ("nbf", "0"), ("sub", 7), ("sub", ""), ("client_id", ["a"]),
                     ("jti", {"id": 1}), ("scope", ["payments:read"]), ("exp", 1e300),
                     ("sid", 5), ("acr", False)]:
    slug = f"{claim}-{type(value).__name__}".replace("_", "-")
    if claim == "sub" and value == "":
        slug = "sub-empty"
    if claim == "exp" and isinstance(value, float):
        slug = "exp-huge-float"
    case(f"claim-{slug}", "missing_claim", f"{claim} is {json.dumps(value)}",
         claims=claims(**{claim: value}))
# Introspection says whether a token is active and reports its scope; the action's scope is
# the backend's to compare (RFC 7662 §2.2), so these are active there.
case("scope-missing", "insufficient_scope", "no scope at all", claims=claims(scope=None),
     expect_introspection="allow")
case("scope-other", "insufficient_scope", "a scope the action does not need",
     claims=claims(scope="payments:create"), expect_introspection="allow")
case("scope-prefix", "insufficient_scope", "a scope that only starts like the needed one",
     claims=claims(scope="payments:readx"), expect_introspection="allow")

# ----- duplicate names -----
case("duplicate-header-kid", "malformed", "kid twice in the header",
     header_text='{"alg":"EdDSA","typ":"at+jwt","kid":"$kid","kid":"other"}')
case("duplicate-header-alg", "malformed", "alg twice, EdDSA then none",
     header_text='{"alg":"EdDSA","typ":"at+jwt","kid":"$kid","alg":"none"}')
case("duplicate-claim-sub", "malformed", "sub twice in the claims",
     claims_text=json.dumps(CLAIMS)[:-1] + ',"sub":"mallory"}')
case("duplicate-claim-aud", "malformed", "aud twice in the claims",
     claims_text=json.dumps(CLAIMS)[:-1] + ',"aud":"reports"}')
case("duplicate-claim-escaped", "malformed", "sub twice, once written with a JSON escape",
     claims_text=json.dumps(CLAIMS)[:-1] + ',"s\\u0075b":"mallory"}')

# ----- encodings -----
case("b64-padded-header", "malformed", "the header part padded with =", then=["pad_header"])
case("b64-trailing-bits", "malformed",
     "the signature's last character with non-zero unused bits (decodes the same leniently)",
     then=["trailing_bits"])
# Nine bytes of 0x7E hold an aligned 0x7E7E7E, which base64url writes "fn5-": the header has a
# character the standard alphabet writes otherwise, whatever the random signature holds.
case("b64-standard-alphabet", "malformed", "a part in the standard alphabet (+ and /)",
     header=header(x="~~~~~~~~~"), then=["standard_alphabet"])
case("b64-whitespace", "malformed", "a line break inside the payload part",
     then=["whitespace"])
case("b64-bom-header", "malformed", "a byte-order mark before the header's JSON",
     header_text='\ufeff{"alg":"EdDSA","typ":"at+jwt","kid":"$kid"}')
case("header-array", "malformed", "the header is a JSON array",
     header_text='["EdDSA","at+jwt","$kid"]')
case("header-not-json", "malformed", "the header is not JSON", header_text="alg=EdDSA")
case("claims-array", "malformed", "the claims are a JSON array, signed by the issuer",
     claims_text='["$sub"]')
case("claims-not-json", "malformed", "the claims are not JSON, signed by the issuer",
     claims_text="sub=$sub")
case("claims-trailing-garbage", "malformed", "valid claims followed by more bytes",
     claims_text=json.dumps(CLAIMS) + "x")

# ----- other serializations -----
case("json-flattened", "malformed", "the JWS JSON flattened serialization",
     then=["json_flattened"])
case("json-general", "malformed", "the JWS JSON general serialization",
     then=["json_general"])
case("jwe-five-parts", "malformed", "a JWE compact serialization (five parts)",
     token_text="eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.T0FFUA.aXY.Y2lwaGVy.dGFn")
case("jwe-shaped-header", "unsupported_algorithm", "a JWE header (alg dir) on three parts",
     header={"alg": "dir", "enc": "A256GCM", "typ": "at+jwt", "kid": "$kid"})
case("two-parts", "malformed", "header and payload only", then=["drop_signature_part"])
case("four-parts", "malformed", "an extra part", then=["extra_part"])
case("empty", "malformed", "the empty string", token_text="",
     expect_introspection="invalid_request")
case("dots-only", "malformed", "two dots", token_text="..")
case("garbage", "malformed", "not a token", token_text="not a token")

# ----- oversized and deeply nested -----
case("oversized-claims", "token_too_large", "9 KB of claims",
     claims=claims(pad="x" * 9000))
case("nested-claims-deep", "malformed", "claims nested 1,500 arrays deep, signed by the issuer",
     claims_text=json.dumps(CLAIMS)[:-1] + ',"deep":' + "[" * 1500 + "]" * 1500 + "}")
case("nested-header-deep", "malformed", "a header member nested 2,000 arrays deep",
     header_text='{"alg":"EdDSA","typ":"at+jwt","kid":"$kid","x":' + "[" * 2000 + "]" * 2000 + "}")
case("nested-jwt-cty", "malformed", "cty JWT: a JWT nested in the payload",
     header=header(cty="JWT"), claims="$genuine_token")
case("nested-jwt-cty-at", "malformed", "cty at+jwt", header=header(cty="at+jwt"))

# ----- ECDSA signatures with r or s of 0 or n -----
for transform in ["ecdsa_r_zero", "ecdsa_s_zero", "ecdsa_r_n", "ecdsa_s_n", "ecdsa_both_zero"]:
    case(transform.replace("_", "-"), "bad_signature",
         f"an ES256 signature with {transform[6:].replace('_', ' ')}",
         header=HEADER_ES, key="issuer_es256", then=[transform])
case("ecdsa-der-signature", "bad_signature", "an ES256 signature DER-encoded, not r||s",
     header=HEADER_ES, key="issuer_es256", then=["ecdsa_der"])

# ----- modified header, payload or signature after signing -----
case("modified-header", "bad_signature", "a member added to the header after signing",
     then=["modify_header"])
case("modified-payload", "bad_signature", "a scope added to the claims after signing",
     then=["modify_payload"])
case("modified-signature", "bad_signature", "one bit of the signature flipped",
     then=["flip_signature"])
case("truncated-signature", "bad_signature", "the signature's last 8 bytes cut",
     then=["truncate_signature"])
case("empty-signature", "bad_signature", "the signature removed, the dot kept",
     then=["empty_signature"])
case("signature-of-another-token", "bad_signature",
     "the signature of a genuine token on other claims", then=["genuine_signature"])


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    seen = set()
    for name, body in CASES:
        if name in seen:
            raise SystemExit(f"duplicate case name {name}")
        seen.add(name)
        with open(os.path.join(OUT, name + ".json"), "w", encoding="utf-8") as f:
            json.dump(body, f, indent=2, ensure_ascii=True)
            f.write("\n")
    print(f"wrote {len(CASES)} cases to {os.path.relpath(OUT)}")


if __name__ == "__main__":
    main()
