//! Authentication and authorisation against the real binary: bad tokens get
//! 401 in the contract format, the role table of docs/product.md decides every
//! write route, agencies never see each other (invariant 6), suspended
//! agencies are refused, and `ledger token` mints tokens the server accepts.

use crate::common;

use std::time::Duration;

use common::{
    agency, answers, app_with_agency_property, app_with_booking, assert_error, created, ledger,
    ledger_ok, now_secs, ok, operator, raw_token, spawn_app, token, token_with, with_status, Reply,
    TestApp, SECRET,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const PROPERTIES: &str = "/api/v1/properties";
const BOOKINGS: &str = "/api/v1/bookings";
const BLOCKS: &str = "/api/v1/availability/blocks";
const OWNER: &str = "owner-1";

fn hs(algorithm: jsonwebtoken::Algorithm, claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode a token")
}

/// An `Authorization` header value of the Bearer scheme.
fn bearer(token: impl std::fmt::Display) -> Option<String> {
    Some(format!("Bearer {token}"))
}

/// Sends with a raw `Authorization` header value (or none).
async fn with_authorization(
    app: &TestApp, method: &str, path: &str, authorization: Option<&str>, body: Option<&Value>,
) -> Reply {
    let headers: Vec<(&str, &str)> = authorization
        .map(|value| vec![("authorization", value)])
        .unwrap_or_default();
    app.send(method, path, None, body, &headers).await
}

// ------------------------------------------------------------------ 401

#[tokio::test]
async fn bad_tokens_get_401_in_the_contract_format_and_change_nothing() {
    let (app, agency_id, admin, property, (booking, _)) =
        app_with_booking("2027-03-01", "2027-03-05").await;
    let events = app.total_events().await;

    let now = now_secs();
    let claims = |extra: Value| {
        let mut claims =
            json!({"sub": "admin-1", "agency_id": agency_id, "role": "admin", "exp": now + 3600});
        if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
            for (key, value) in extra {
                if value.is_null() {
                    claims.remove(key);
                } else {
                    claims.insert(key.clone(), value.clone());
                }
            }
        }
        claims
    };
    let valid = claims(json!({}));
    let signed = |extra: Value| token_with(claims(extra), SECRET);

    // A staff token with its payload swapped for an admin's, signature kept.
    let staff = signed(json!({"role": "staff"}));
    let admin_payload = admin.split('.').nth(1).expect("a payload").to_owned();
    let mut parts: Vec<&str> = staff.split('.').collect();
    parts[1] = &admin_payload;
    let tampered = parts.join(".");
    let valid_signature = admin.split('.').nth(2).expect("a signature").to_owned();

    let unauthenticated: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("Basic scheme", Some("Basic YWRtaW46YWRtaW4=".into())),
        ("Bearer and nothing", Some("Bearer ".into())),
        ("Bearer with spaces", Some("Bearer    ".into())),
        ("token without the scheme", Some(admin.clone())),
        ("not a JWT", Some("Bearer not-a-jwt".into())),
        ("three garbage parts", Some("Bearer a.b.c".into())),
        (
            "wrong key",
            bearer(token_with(
                valid.clone(),
                "another-secret-of-at-least-32-bytes!",
            )),
        ),
        ("tampered payload", bearer(&tampered)),
        (
            "alg none",
            bearer(raw_token(
                json!({"alg": "none", "typ": "JWT"}),
                valid.clone(),
                "",
            )),
        ),
        (
            "alg None",
            bearer(raw_token(
                json!({"alg": "None", "typ": "JWT"}),
                valid.clone(),
                "",
            )),
        ),
        (
            "alg none with a signature",
            bearer(raw_token(
                json!({"alg": "none", "typ": "JWT"}),
                valid.clone(),
                &valid_signature,
            )),
        ),
        (
            "HS384",
            bearer(hs(jsonwebtoken::Algorithm::HS384, &valid, SECRET)),
        ),
        (
            "HS512",
            bearer(hs(jsonwebtoken::Algorithm::HS512, &valid, SECRET)),
        ),
        ("no sub", bearer(signed(json!({"sub": null})))),
        ("empty sub", bearer(signed(json!({"sub": ""})))),
        ("no agency_id", bearer(signed(json!({"agency_id": null})))),
        (
            "agency_id not a UUID",
            bearer(signed(json!({"agency_id": "acme"}))),
        ),
        ("no role", bearer(signed(json!({"role": null})))),
        ("unknown role", bearer(signed(json!({"role": "superuser"})))),
        ("no exp", bearer(signed(json!({"exp": null})))),
        (
            "exp not a number",
            bearer(signed(json!({"exp": "tomorrow"}))),
        ),
        (
            "nbf in the future",
            bearer(signed(json!({"nbf": now + 600}))),
        ),
        (
            "iat in the future",
            bearer(signed(json!({"iat": now + 600}))),
        ),
    ];
    let expired = bearer(signed(json!({"exp": now - 3600, "iat": now - 7200})));

    let targets: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            PROPERTIES.to_owned(),
            Some(json!({"name": "Intruder"})),
        ),
        ("GET", format!("{PROPERTIES}/{property}"), None),
        (
            "PATCH",
            format!("{PROPERTIES}/{property}"),
            Some(json!({"name": "Intruder"})),
        ),
        (
            "POST",
            BOOKINGS.to_owned(),
            Some(
                json!({"property_id": property, "check_in": "2027-04-01", "check_out": "2027-04-02", "guest": {"name": "X"}}),
            ),
        ),
        ("GET", format!("{BOOKINGS}/{booking}"), None),
        (
            "POST",
            format!("{BOOKINGS}/{booking}/cancel"),
            Some(json!({})),
        ),
        ("DELETE", format!("{BLOCKS}/{}", Uuid::new_v4()), None),
    ];
    for (method, path, body) in &targets {
        for (case, authorization) in &unauthenticated {
            let reply =
                with_authorization(&app, method, path, authorization.as_deref(), body.as_ref())
                    .await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{case}: {method} {path}: {:?}",
                reply.body
            );
            assert_error(&reply, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
        }
        let reply = with_authorization(&app, method, path, expired.as_deref(), body.as_ref()).await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED");
    }
    assert_eq!(
        app.total_events().await,
        events,
        "no refused request appended anything"
    );

    // nbf and iat in the past are honoured and fine; the valid token works.
    let property_path = format!("{PROPERTIES}/{property}?min_position={}", app.head().await);
    let fine = bearer(signed(json!({"nbf": now - 60, "iat": now - 60})));
    ok(with_authorization(&app, "GET", &property_path, fine.as_deref(), None).await);
    let lower = format!("bearer {admin}");
    let reply = with_authorization(&app, "GET", &property_path, Some(&lower), None).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the scheme is case-insensitive: {:?}",
        reply.body
    );
}

// ------------------------------------------------------------------ role table

#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    RegisterProperty,
    UpdateProperty,
    ArchiveProperty,
    Reserve,
    Modify,
    Confirm,
    Cancel,
    CheckIn,
    CheckOut,
    NoShow,
    CreateBlock(&'static str),
    ReleaseBlock(&'static str),
}

const ROUTES: [Route; 16] = [
    Route::RegisterProperty,
    Route::UpdateProperty,
    Route::ArchiveProperty,
    Route::Reserve,
    Route::Modify,
    Route::Confirm,
    Route::Cancel,
    Route::CheckIn,
    Route::CheckOut,
    Route::NoShow,
    Route::CreateBlock("owner_stay"),
    Route::CreateBlock("maintenance"),
    Route::CreateBlock("other"),
    Route::ReleaseBlock("owner_stay"),
    Route::ReleaseBlock("maintenance"),
    Route::ReleaseBlock("other"),
];

const ROLES: [&str; 6] = [
    "admin",
    "manager",
    "staff",
    "owner",
    "accountant",
    "operator",
];

/// docs/product.md's role table, for a property the owner owns. Operators have
/// no agency: every agency route is refused to them (their token here names
/// the agency, which is ignored).
fn allowed(role: &str, route: Route) -> bool {
    use Route::*;
    match route {
        RegisterProperty | UpdateProperty | ArchiveProperty => matches!(role, "admin" | "manager"),
        Reserve | Modify | Confirm | Cancel | CheckIn | CheckOut | NoShow => {
            matches!(role, "admin" | "manager" | "staff")
        }
        CreateBlock(reason) | ReleaseBlock(reason) => {
            matches!(role, "admin" | "manager" | "staff")
                || (role == "owner" && reason == "owner_stay")
        }
    }
}

/// Sets up what `route` acts on (as admin) on a fresh property owned by
/// OWNER, then runs it with `token`. Returns the reply and the property.
async fn run(app: &TestApp, admin: &str, token: &str, route: Route) -> (Reply, Uuid) {
    let property = app.property(admin, Some(OWNER)).await;
    let booking = |status: &'static str| async move {
        let reply = created(
            app.reserve_with(
                admin,
                property,
                "2027-03-01",
                "2027-03-05",
                json!({"status": status}),
            )
            .await,
        );
        reply.id()
    };
    let reply = match route {
        Route::RegisterProperty => {
            app.post(PROPERTIES, token, json!({"name": "New", "owner_id": OWNER}))
                .await
        }
        Route::UpdateProperty => {
            app.edit_property(token, property, json!({"name": "Renamed"}))
                .await
        }
        Route::ArchiveProperty => {
            app.post(
                &format!("{PROPERTIES}/{property}/archive"),
                token,
                json!({}),
            )
            .await
        }
        Route::Reserve => {
            app.reserve(token, property, "2027-03-01", "2027-03-05")
                .await
        }
        Route::Modify => {
            let id = booking("confirmed").await;
            app.edit_booking(token, id, json!({"notes": "late"})).await
        }
        Route::Confirm => {
            let id = booking("tentative").await;
            app.confirm(token, id).await
        }
        Route::Cancel => {
            let id = booking("confirmed").await;
            app.cancel_for(token, id, "r").await
        }
        Route::CheckIn => {
            let id = booking("confirmed").await;
            app.act(token, id, "check-in").await
        }
        Route::CheckOut => {
            let id = booking("confirmed").await;
            ok(app.act(admin, id, "check-in").await);
            app.act(token, id, "check-out").await
        }
        Route::NoShow => {
            let id = booking("confirmed").await;
            app.act(token, id, "no-show").await
        }
        Route::CreateBlock(reason) => {
            app.block(token, property, "2027-03-01", "2027-03-05", reason)
                .await
        }
        Route::ReleaseBlock(reason) => {
            let reply = created(
                app.block(admin, property, "2027-03-01", "2027-03-05", reason)
                    .await,
            );
            app.release(token, reply.id()).await
        }
    };
    (reply, property)
}

#[tokio::test]
async fn every_role_against_every_write_route_follows_the_role_table() {
    let app = spawn_app().await;
    let (agency_id, admin) = agency();
    let mut failures = Vec::new();
    for role in ROLES {
        let sub = if role == "owner" { OWNER } else { "user-1" };
        let caller = token(agency_id, role, sub);
        for route in ROUTES {
            let (reply, property) = run(&app, &admin, &caller, route).await;
            let expected = allowed(role, route);
            let ok = if expected {
                reply.status.is_success()
            } else {
                reply.status == StatusCode::FORBIDDEN
                    && reply.code() == "FORBIDDEN"
                    && reply.body["error"]["request_id"].is_string()
            };
            if !ok {
                failures.push(format!(
                    "{role} {route:?}: expected {}, got {} {}",
                    if expected { "2xx" } else { "403 FORBIDDEN" },
                    reply.status,
                    reply.body
                ));
            }
            if !expected {
                // Nothing but the set-up's events is in the property's stream.
                let stream = app.property_events(property).await;
                let setup_events = match route {
                    Route::RegisterProperty
                    | Route::UpdateProperty
                    | Route::ArchiveProperty
                    | Route::Reserve
                    | Route::CreateBlock(_) => 1,
                    Route::CheckOut => 3,
                    _ => 2,
                };
                if stream != setup_events {
                    failures.push(format!(
                        "{role} {route:?}: a refused command appended events"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "role table violations:\n{}",
        failures.join("\n")
    );
}

// ------------------------------------------------------------------ ops routes

/// Every /ops route, and what it acts on: `None` for the platform, or the
/// agency whose record it addresses.
fn ops_routes(agency: Uuid) -> Vec<(&'static str, String, Option<Value>)> {
    let one = format!("/ops/agencies/{agency}");
    vec![
        ("GET", "/ops/projections".into(), None),
        ("GET", "/ops/current-commit".into(), None),
        ("GET", "/ops/env-sanity".into(), None),
        (
            "POST",
            "/ops/projections/audit/replay".into(),
            Some(json!({})),
        ),
        ("GET", "/ops/projections/audit/replay".into(), None),
        (
            "POST",
            "/ops/projections/audit/parked/retry".into(),
            Some(json!({})),
        ),
        ("GET", "/ops/agencies".into(), None),
        ("GET", one.clone(), None),
        (
            "POST",
            format!("{one}/suspend"),
            Some(json!({"reason": "r"})),
        ),
        ("POST", format!("{one}/reinstate"), Some(json!({}))),
        (
            "PUT",
            format!("{one}/features"),
            Some(json!({"ical_export": true})),
        ),
        ("GET", "/ops/audit-log".into(), None),
    ]
}

/// The ops rows of the role table: an agency admin reads the projections'
/// status and the current commit; everything else is the operators'.
fn ops_allowed(role: &str, method: &str, path: &str) -> bool {
    match role {
        "operator" => true,
        "admin" => method == "GET" && matches!(path, "/ops/projections" | "/ops/current-commit"),
        _ => false,
    }
}

#[tokio::test]
async fn every_role_of_either_agency_against_every_ops_route_follows_the_role_table() {
    let app = spawn_app().await;
    let (own, own_admin) = agency();
    let (other, other_admin) = agency();
    // Both agencies get their records from their first token.
    app.property(&own_admin, None).await;
    app.property(&other_admin, None).await;
    let mut failures = Vec::new();
    for role in ROLES {
        for caller_agency in [own, other] {
            let caller = token(caller_agency, role, "user-1");
            for (method, path, body) in ops_routes(own) {
                let reply = app
                    .send(method, &path, Some(&caller), body.as_ref(), &[])
                    .await;
                let expected = ops_allowed(role, method, &path);
                let ok = if expected {
                    reply.status.is_success()
                } else {
                    reply.status == StatusCode::FORBIDDEN && reply.code() == "FORBIDDEN"
                };
                if !ok {
                    failures.push(format!(
                        "{role} of {} {method} {path}: got {} {}",
                        if caller_agency == own { "own" } else { "other" },
                        reply.status,
                        reply.body
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "ops role table:\n{}",
        failures.join("\n")
    );
    // The operator's suspend was followed by its reinstate: the agency works.
    ok(app.get(PROPERTIES, &own_admin).await);
}

/// What the role tests look for in a calendar: a booking of 1-3 March 2027
/// and a block of 1-3 April in `property`, made by its `admin`; their ids.
async fn a_booking_and_a_block(app: &TestApp, admin: &str, property: Uuid) -> (Uuid, Uuid) {
    let booking = app
        .reserve(admin, property, "2027-03-01", "2027-03-03")
        .await;
    let block = app
        .block(admin, property, "2027-04-01", "2027-04-03", "other")
        .await;
    (booking.id(), block.id())
}

#[tokio::test]
async fn operators_need_no_agency_and_are_refused_every_agency_route() {
    let app = spawn_app().await;
    let (agency_id, admin) = agency();
    let property = app.property(&admin, Some(OWNER)).await;
    let (booking, block) = a_booking_and_a_block(&app, &admin, property).await;
    let no_agency = operator();
    let garbage_agency = token_with(
        json!({"sub": "op", "role": "operator", "agency_id": "acme", "exp": now_secs() + 600}),
        SECRET,
    );
    let reply = app.get("/ops/env-sanity", &garbage_agency).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "agency_id is ignored: {:?}",
        reply.body
    );
    let reads = [
        PROPERTIES.to_owned(),
        format!("{PROPERTIES}/{property}"),
        format!("{PROPERTIES}/{property}/events"),
        format!("{PROPERTIES}/{property}/ical-feeds"),
        BOOKINGS.to_owned(),
        format!("{BOOKINGS}/{booking}"),
        format!("{BLOCKS}/{block}"),
        format!("/api/v1/availability?property_id={property}&from=2027-03-01&to=2027-04-01"),
        "/api/v1/availability/search?from=2027-03-01&to=2027-03-02".to_owned(),
        "/api/v1/audit-log".to_owned(),
    ];
    let writes = [
        (
            "POST",
            format!("{PROPERTIES}/{property}/ical-token"),
            json!({}),
        ),
        (
            "POST",
            format!("{PROPERTIES}/{property}/ical-feeds"),
            json!({"url": "https://example.com/a.ics"}),
        ),
        (
            "POST",
            format!("{PROPERTIES}/{property}/archive"),
            json!({}),
        ),
        ("POST", format!("{BOOKINGS}/{booking}/cancel"), json!({})),
    ];
    let events = app.total_events().await;
    for caller in [
        &no_agency,
        &garbage_agency,
        &token(agency_id, "operator", "op"),
    ] {
        for path in &reads {
            let reply = app.get(path, caller).await;
            assert_error(&reply, StatusCode::FORBIDDEN, "FORBIDDEN");
        }
        for (method, path, body) in &writes {
            let reply = app.send(method, path, Some(caller), Some(body), &[]).await;
            assert_error(&reply, StatusCode::FORBIDDEN, "FORBIDDEN");
        }
    }
    assert_eq!(
        app.total_events().await,
        events,
        "operators changed nothing"
    );
}

#[tokio::test]
async fn owners_act_on_their_own_properties_only() {
    let app = spawn_app().await;
    let (agency_id, admin) = agency();
    let owner = token(agency_id, "owner", OWNER);
    let own = app.property(&admin, Some(OWNER)).await;
    let someone_elses = app.property(&admin, Some("owner-2")).await;
    let unowned = app.property(&admin, None).await;

    // Reads: own properties only; the others do not exist for the owner.
    app.read_ok(&format!("{PROPERTIES}/{own}"), &owner).await;
    let own_booking = app
        .reserve(&admin, own, "2027-03-01", "2027-03-03")
        .await
        .id();
    app.read_ok(&format!("{BOOKINGS}/{own_booking}"), &owner)
        .await;

    for other in [someone_elses, unowned] {
        let reply = app.read(&format!("{PROPERTIES}/{other}"), &owner).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND");
        let booking = app
            .reserve(&admin, other, "2027-03-01", "2027-03-03")
            .await
            .id();
        let reply = app.read(&format!("{BOOKINGS}/{booking}"), &owner).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "BOOKING_NOT_FOUND");

        // An owner stay on a property they do not own: as if it did not exist.
        let events = app.property_events(other).await;
        let reply = app
            .block(&owner, other, "2027-05-01", "2027-05-03", "owner_stay")
            .await;
        assert_error(&reply, StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND");
        let block = app
            .block(&admin, other, "2027-06-01", "2027-06-03", "owner_stay")
            .await
            .id();
        let reply = app.release(&owner, block).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "BLOCK_NOT_FOUND");
        let reply = app.read(&format!("{BLOCKS}/{block}"), &owner).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "BLOCK_NOT_FOUND");
        assert_eq!(
            app.property_events(other).await,
            events + 1,
            "only the admin's block was appended"
        );
    }

    // On their own property: owner stays yes, anything else no.
    let reply = created(
        app.block(&owner, own, "2027-05-01", "2027-05-03", "owner_stay")
            .await,
    );
    let reply = ok(app.release(&owner, reply.id()).await);
    assert_eq!(reply.body["released"], true);
    for reason in ["maintenance", "other"] {
        let reply = app
            .block(&owner, own, "2027-07-01", "2027-07-03", reason)
            .await;
        assert_error(&reply, StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    let reply = app.reserve(&owner, own, "2027-08-01", "2027-08-03").await;
    assert_error(&reply, StatusCode::FORBIDDEN, "FORBIDDEN");
    let reply = app.cancel(&owner, own_booking).await;
    assert_error(&reply, StatusCode::FORBIDDEN, "FORBIDDEN");
    let reply = app
        .edit_property(&owner, own, json!({"owner_id": "owner-9"}))
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "FORBIDDEN");

    // Once the property is given to someone else, the owner loses it.
    ok(app
        .edit_property(&admin, own, json!({"owner_id": "owner-2"}))
        .await);
    let reply = app.read(&format!("{PROPERTIES}/{own}"), &owner).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND");
    let reply = app
        .block(&owner, own, "2027-09-01", "2027-09-03", "owner_stay")
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND");
}

#[tokio::test]
async fn every_role_but_the_owner_reads_the_agencys_calendar() {
    let (app, agency_id, admin, property) = app_with_agency_property().await;
    let (booking, block) = a_booking_and_a_block(&app, &admin, property).await;
    for role in ["admin", "manager", "staff", "accountant"] {
        let caller = token(agency_id, role, "reader");
        for path in [
            format!("{PROPERTIES}/{property}"),
            format!("{BOOKINGS}/{booking}"),
            format!("{BLOCKS}/{block}"),
        ] {
            let reply = app.read(&path, &caller).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{role} GET {path}: {:?}",
                reply.body
            );
        }
    }
}

/// A repeated Idempotency-Key answers with the stored reply, but only to a
/// caller who may make the request: the role table still applies.
#[tokio::test]
async fn an_idempotency_key_replay_is_still_held_to_the_role_table() {
    let app = spawn_app().await;
    let (agency_id, admin) = agency();
    let accountant = token(agency_id, "accountant", "acc-1");
    let owner = token(agency_id, "owner", OWNER);

    let body = json!({"name": "Admin's"});
    let key = [("idempotency-key", "admin-key-1")];
    let first = created(app.post_with(PROPERTIES, &admin, body.clone(), &key).await);
    let replay = app
        .post_with(PROPERTIES, &accountant, body.clone(), &key)
        .await;
    assert_error(&replay, StatusCode::FORBIDDEN, "FORBIDDEN");

    // An owner may not read bookings of a property they do not own, nor
    // book at all: a replay must not hand them the booking.
    let property = first.id();
    let body = json!({
        "property_id": property,
        "check_in": "2027-03-01",
        "check_out": "2027-03-05",
        "guest": {"name": "Private Guest", "email": "private@example.com"},
    });
    let key = [("idempotency-key", "admin-key-2")];
    created(app.post_with(BOOKINGS, &admin, body.clone(), &key).await);
    let replay = with_status(
        StatusCode::FORBIDDEN,
        app.post_with(BOOKINGS, &owner, body.clone(), &key).await,
    );
    assert!(
        replay.body["guest"].is_null(),
        "the guest leaked: {:?}",
        replay.body
    );
}

// ------------------------------------------------------------------ isolation

#[tokio::test]
async fn another_agency_gets_404_on_everything_of_this_one() {
    let (app, _, admin_a, property, (booking, _)) =
        app_with_booking("2027-03-01", "2027-03-05").await;
    let (_, admin_b) = agency();
    let tentative = app
        .hold(&admin_a, property, "2027-04-01", "2027-04-05", None)
        .await
        .id();
    let block = app
        .block(
            &admin_a,
            property,
            "2027-05-01",
            "2027-05-05",
            "maintenance",
        )
        .await
        .id();
    let events = app.total_events().await;

    // What a made-up id gets, to compare with.
    let ghost = Uuid::new_v4();
    let unknown_property = app.read(&format!("{PROPERTIES}/{ghost}"), &admin_b).await;
    let unknown_booking = app.read(&format!("{BOOKINGS}/{ghost}"), &admin_b).await;

    let property_routes: Vec<Reply> = vec![
        app.read(&format!("{PROPERTIES}/{property}"), &admin_b)
            .await,
        app.edit_property(&admin_b, property, json!({"name": "Mine now"}))
            .await,
        app.post(
            &format!("{PROPERTIES}/{property}/archive"),
            &admin_b,
            json!({}),
        )
        .await,
        // Overlapping nights: a 409 would betray the booking.
        app.reserve(&admin_b, property, "2027-03-02", "2027-03-03")
            .await,
        app.block(
            &admin_b,
            property,
            "2027-03-02",
            "2027-03-03",
            "maintenance",
        )
        .await,
    ];
    for reply in &property_routes {
        assert_error(reply, StatusCode::NOT_FOUND, "PROPERTY_NOT_FOUND");
        assert_eq!(
            reply.body["error"]["message"], unknown_property.body["error"]["message"],
            "the same as for an unknown id"
        );
    }
    let booking_routes: Vec<Reply> = vec![
        app.read(&format!("{BOOKINGS}/{booking}"), &admin_b).await,
        app.edit_booking(&admin_b, booking, json!({"notes": "x"}))
            .await,
        app.confirm(&admin_b, tentative).await,
        app.cancel(&admin_b, booking).await,
        app.act(&admin_b, booking, "check-in").await,
        app.act(&admin_b, booking, "check-out").await,
        app.act(&admin_b, booking, "no-show").await,
    ];
    for reply in &booking_routes {
        assert_error(reply, StatusCode::NOT_FOUND, "BOOKING_NOT_FOUND");
        assert_eq!(
            reply.body["error"]["message"],
            unknown_booking.body["error"]["message"]
        );
    }
    for reply in [
        app.read(&format!("{BLOCKS}/{block}"), &admin_b).await,
        app.release(&admin_b, block).await,
    ] {
        assert_error(&reply, StatusCode::NOT_FOUND, "BLOCK_NOT_FOUND");
    }
    // Every role of agency B, not only its admin.
    let agency_b = Uuid::new_v4();
    for role in ["manager", "staff", "owner", "accountant"] {
        let caller = token(agency_b, role, "user-1");
        let reply = app.read(&format!("{PROPERTIES}/{property}"), &caller).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{role}: {:?}",
            reply.body
        );
        let reply = app.read(&format!("{BOOKINGS}/{booking}"), &caller).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{role}: {:?}",
            reply.body
        );
    }

    assert_eq!(app.total_events().await, events, "agency B changed nothing");
    let reply = app
        .read(&format!("{PROPERTIES}/{property}"), &admin_a)
        .await;
    assert_eq!(reply.body["name"], "Sea View");
    assert_eq!(reply.body["archived"], false);
    let reply = app.read(&format!("{BOOKINGS}/{booking}"), &admin_a).await;
    assert_eq!(reply.body["status"], "confirmed");
    let reply = app.read(&format!("{BOOKINGS}/{tentative}"), &admin_a).await;
    assert_eq!(reply.body["status"], "tentative");
    let reply = app.read(&format!("{BLOCKS}/{block}"), &admin_a).await;
    assert_eq!(reply.body["released"], false);

    // An Idempotency-Key of agency A means nothing to agency B.
    let key = [("idempotency-key", "shared-key")];
    let a = app
        .post_with(PROPERTIES, &admin_a, json!({"name": "A's"}), &key)
        .await;
    let b = app
        .post_with(PROPERTIES, &admin_b, json!({"name": "B's"}), &key)
        .await;
    assert_eq!(
        (a.status, b.status),
        (StatusCode::CREATED, StatusCode::CREATED),
        "{:?}",
        b.body
    );
    assert_ne!(a.id(), b.id());
    assert_eq!(b.body["name"], "B's");
}

// ------------------------------------------------------------------ suspension

/// How long a suspension made by another process (the CLI) may take to hold
/// here: the server refreshes suspensions every few seconds.
const SUSPENSION_REFRESH: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_suspended_agency_gets_403_on_every_route_until_reinstated() {
    let (app, agency_id, admin, property, (booking, _)) =
        app_with_booking("2027-03-01", "2027-03-05").await;
    let (_, other_admin) = agency();
    let other_property = app.property(&other_admin, None).await;
    let agency_text = agency_id.to_string();
    let db = [("DATABASE_URL", app.database_url.as_str())];

    ledger_ok(
        &["agency", "suspend", &agency_text, "--reason", "unpaid"],
        &db,
    );
    let path = format!("{PROPERTIES}/{property}");
    let reply = answers(StatusCode::FORBIDDEN, SUSPENSION_REFRESH, || {
        app.read(&path, &admin)
    })
    .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "AGENCY_SUSPENDED");

    let events = app.total_events().await;
    let staff = token(agency_id, "staff", "staff-1");
    let replies = [
        app.post(PROPERTIES, &admin, json!({"name": "More"})).await,
        app.patch(&path, &admin, json!({"name": "More"})).await,
        app.reserve(&staff, property, "2027-04-01", "2027-04-02")
            .await,
        app.read(&format!("{BOOKINGS}/{booking}"), &staff).await,
        app.cancel(&admin, booking).await,
        app.block(&admin, property, "2027-05-01", "2027-05-02", "other")
            .await,
        app.read("/ops/current-commit", &admin).await,
    ];
    for reply in &replies {
        assert_error(reply, StatusCode::FORBIDDEN, "AGENCY_SUSPENDED");
    }
    assert_eq!(
        app.total_events().await,
        events,
        "a suspended agency writes nothing"
    );

    // Other agencies are unaffected; health needs no token.
    app.read_ok(&format!("{PROPERTIES}/{other_property}"), &other_admin)
        .await;
    let reply = app.send("GET", "/health", None, None, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);

    ledger_ok(&["agency", "reinstate", &agency_text], &db);
    let reply = answers(StatusCode::OK, SUSPENSION_REFRESH, || {
        app.read(&path, &admin)
    })
    .await;
    assert_eq!(reply.status, StatusCode::OK, "reinstated: {:?}", reply.body);
    created(
        app.reserve(&staff, property, "2027-04-01", "2027-04-02")
            .await,
    );
}

// ------------------------------------------------------------------ ledger token

/// The arguments of `ledger token` for `sub` as `role` of `agency`.
fn token_command<'a>(agency: &'a str, role: &'a str, sub: &'a str) -> [&'a str; 7] {
    ["token", "--agency", agency, "--role", role, "--sub", sub]
}

#[tokio::test]
async fn ledger_token_mints_a_token_the_server_accepts() {
    let app = spawn_app().await;
    let agency_id = Uuid::new_v4();
    let agency_text = agency_id.to_string();
    let secret = [("JWT_SECRET", SECRET)];

    let minted = ledger_ok(
        &[
            &token_command(&agency_text, "manager", "cli-user")[..],
            &["--ttl", "10m"],
        ]
        .concat(),
        &secret,
    );
    assert_eq!(minted.split('.').count(), 3, "a JWT: {minted}");

    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_required_spec_claims(&["exp"]);
    let claims = jsonwebtoken::decode::<Value>(
        &minted,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .expect("signed with JWT_SECRET")
    .claims;
    assert_eq!(claims["sub"], "cli-user");
    assert_eq!(claims["agency_id"], agency_text);
    assert_eq!(claims["role"], "manager");
    let exp = claims["exp"].as_u64().expect("exp");
    assert!(
        exp.abs_diff(now_secs() + 600) < 30,
        "a ten-minute token: {claims}"
    );

    let reply = created(
        app.post(PROPERTIES, &minted, json!({"name": "Minted"}))
            .await,
    );
    assert_eq!(reply.body["agency_id"], agency_text);
    let property = reply.id();
    app.read_ok(&format!("{PROPERTIES}/{property}"), &minted)
        .await;

    // A staff token from the CLI is held to the role table.
    let staff = ledger_ok(&token_command(&agency_text, "staff", "cli-staff"), &secret);
    let reply = app.post(PROPERTIES, &staff, json!({"name": "Nope"})).await;
    assert_error(&reply, StatusCode::FORBIDDEN, "FORBIDDEN");
    created(
        app.reserve(&staff, property, "2027-03-01", "2027-03-02")
            .await,
    );

    // Signed with another secret: refused by the server.
    let foreign = ledger_ok(
        &token_command(&agency_text, "admin", "x"),
        &[("JWT_SECRET", "a-different-secret-that-is-long-enough")],
    );
    let reply = app
        .read(&format!("{PROPERTIES}/{property}"), &foreign)
        .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");

    // The CLI refuses what the server would refuse.
    let out = ledger(&token_command(&agency_text, "root", "x"), &secret);
    assert!(!out.status.success(), "an unknown role is refused");
    let out = ledger(
        &token_command(&agency_text, "admin", "x"),
        &[("JWT_SECRET", "too-short")],
    );
    assert!(!out.status.success(), "a secret under 32 bytes is refused");
    let out = ledger(&token_command("acme", "admin", "x"), &secret);
    assert!(!out.status.success(), "the agency is a UUID");
}
