//! The HTTP API (issue 5): every route, status code and error body, the bearer token, and the
//! OpenAPI document checked against what the server really answers. The server binds port 0
//! over a copy of the golden storage documents.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use feedback::http::{serve, ApiToken, HttpOptions};
use feedback::kafka::processor::Handles;
use serde_json::Value;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/storage");
const TOKEN: &str = "test-token-5f2c";

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A GET over a fresh connection; `token` goes in an Authorization: Bearer header.
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Response {
    request(addr, "GET", path, token)
}

fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let length = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{length}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    assert!(!chunked, "the API answers with a content-length");
    Response {
        status,
        headers,
        body,
    }
}

/// A server over a copy of the golden documents, plus a tenant whose documents cannot be read
/// (directories in their place) for the 500 answer.
struct TestServer {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn server(token: Option<&str>) -> TestServer {
    server_with(token, Handles::new())
}

fn server_with(token: Option<&str>, handles: Handles) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new(GOLDEN), dir.path());
    let perf = dir.path().join("metadata/performance");
    for name in [
        "unreadable.json",
        "unreadable_calibration.json",
        "unreadable_drift.json",
    ] {
        std::fs::create_dir(perf.join(name)).unwrap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let options = HttpOptions {
        storage_dir: dir.path().to_owned(),
        api_token: token.map(|t| ApiToken::new(t).unwrap()),
    };
    let server = rt
        .block_on(serve(
            "127.0.0.1:0".parse().unwrap(),
            handles,
            options,
            std::future::pending(),
        ))
        .unwrap();
    TestServer {
        addr: server.addr,
        dir,
        _rt: rt,
    }
}

fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
}

#[test]
fn tenants_lists_every_tenant_with_its_status_and_tags() {
    let s = server(None);
    let r = get(s.addr, "/api/v1/tenants", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let list = r.json();
    let tenants = list["tenants"].as_array().unwrap();
    let names: Vec<&str> = tenants
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    // `unreadable` is left out: its performance document cannot be read.
    assert_eq!(
        names,
        ["degraded-001", "drift-003", "healthy-000", "miscal-002"]
    );
    let miscal = &tenants[3];
    let doc: Value = serde_json::from_slice(
        &std::fs::read(s.dir.path().join("metadata/performance/miscal-002.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(miscal["as_of"], doc["as_of"]);
    assert_eq!(miscal["status"], doc["status"]);
    assert_eq!(
        miscal["tags"],
        serde_json::json!(["model.calibration.warn_low"])
    );
    assert_eq!(miscal.as_object().unwrap().len(), 4, "{miscal}");
}

/// Under `run`, the list says which tenants this instance's processor owns: the documents of
/// the others are another instance's to keep current.
#[test]
fn tenants_say_whether_this_instance_owns_them_once_a_processor_runs() {
    let handles = Handles::new();
    let owned = ["healthy-000", "miscal-002"].map(String::from);
    *handles.owned.write().unwrap() = Some(owned.into_iter().collect());
    let s = server_with(None, handles.clone());
    let list = get(s.addr, "/api/v1/tenants", None).json();
    let owned: Vec<(&str, &Value)> = (list["tenants"].as_array().unwrap().iter())
        .map(|t| (t["tenant"].as_str().unwrap(), &t["owned"]))
        .collect();
    assert_eq!(
        owned,
        [
            ("degraded-001", &Value::Bool(false)),
            ("drift-003", &Value::Bool(false)),
            ("healthy-000", &Value::Bool(true)),
            ("miscal-002", &Value::Bool(true)),
        ]
    );
    // A revocation takes effect on the next request.
    *handles.owned.write().unwrap() = Some(Default::default());
    let list = get(s.addr, "/api/v1/tenants", None).json();
    assert!(
        (list["tenants"].as_array().unwrap().iter()).all(|t| t["owned"] == false),
        "{list}"
    );
}

#[test]
fn an_empty_storage_directory_has_no_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let options = HttpOptions {
        storage_dir: dir.path().join("not-yet-written"),
        api_token: None,
    };
    let server = rt
        .block_on(serve(
            "127.0.0.1:0".parse().unwrap(),
            Handles::new(),
            options,
            std::future::pending(),
        ))
        .unwrap();
    let r = get(server.addr, "/api/v1/tenants", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"tenants": []}));
}

#[test]
fn documents_are_served_as_stored() {
    let s = server(None);
    let perf = s.dir.path().join("metadata/performance");
    for (route, file) in [
        ("performance", "miscal-002.json"),
        ("calibration", "miscal-002_calibration.json"),
        ("drift", "miscal-002_drift.json"),
    ] {
        let r = get(s.addr, &format!("/api/v1/tenants/miscal-002/{route}"), None);
        assert_eq!(r.status, 200, "{route}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body, std::fs::read(perf.join(file)).unwrap(), "{route}");
    }
}

#[test]
fn invalid_tenants_are_refused_before_any_file_is_touched() {
    let s = server(None);
    // Each of these names a file that exists, or would escape the directory, if it were used.
    for tenant in [
        "miscal-002_calibration",
        "miscal-002_drift",
        "..%2F..%2Fetc%2Fpasswd",
        "..",
        "Miscal-002",
        "-x",
        "a%20b",
        "%FF",
        &"a".repeat(65),
    ] {
        for route in ["performance", "calibration", "drift"] {
            let r = get(s.addr, &format!("/api/v1/tenants/{tenant}/{route}"), None);
            assert_error(&r, 400, "invalid_tenant");
        }
    }
}

#[test]
fn unknown_tenants_and_routes_are_404_with_a_json_error() {
    let s = server(None);
    for route in ["performance", "calibration", "drift"] {
        let r = get(s.addr, &format!("/api/v1/tenants/nobody/{route}"), None);
        assert_error(&r, 404, "unknown_tenant");
        assert!(r.json()["message"].as_str().unwrap().contains("nobody"));
    }
    // A known tenant missing one document: that document is named, the tenant is not unknown.
    let perf = s.dir.path().join("metadata/performance");
    std::fs::remove_file(perf.join("miscal-002_calibration.json")).unwrap();
    let r = get(s.addr, "/api/v1/tenants/miscal-002/calibration", None);
    assert_error(&r, 404, "missing_document");
    let message = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("no calibration document for tenant \"miscal-002\""),
        "{message}"
    );
    assert_eq!(
        get(s.addr, "/api/v1/tenants/miscal-002/drift", None).status,
        200
    );
    for path in [
        "/api/v1/tenants/miscal-002",
        "/api/v1/tenants/miscal-002/alerts",
        "/api/v2/tenants",
        "/nothing",
    ] {
        assert_error(&get(s.addr, path, None), 404, "not_found");
    }
    // The routes are read-only: another method is a 405 with the same JSON error and Allow.
    for (method, path) in [
        ("POST", "/api/v1/tenants"),
        ("DELETE", "/api/v1/tenants/miscal-002/performance"),
        ("PUT", "/metrics"),
    ] {
        let r = request(s.addr, method, path, None);
        assert_error(&r, 405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some("GET,HEAD"), "{method} {path}");
    }
}

#[test]
fn an_unreadable_document_is_a_500_that_does_not_leak_its_path() {
    let s = server(None);
    for route in ["performance", "calibration", "drift"] {
        let r = get(s.addr, &format!("/api/v1/tenants/unreadable/{route}"), None);
        assert_error(&r, 500, "internal");
        let message = r.json()["message"].as_str().unwrap().to_owned();
        assert!(
            !message.contains(s.dir.path().to_str().unwrap()),
            "{message}"
        );
    }
}

#[test]
fn the_token_guards_the_api_and_nothing_else() {
    let s = server(Some(TOKEN));
    for path in [
        "/api/v1/tenants",
        "/api/v1/tenants/miscal-002/calibration",
        "/api/v1/openapi.json",
    ] {
        let r = get(s.addr, path, None);
        assert_error(&r, 401, "unauthorized");
        assert!(r
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")));
        assert_error(&get(s.addr, path, Some("wrong-token")), 401, "unauthorized");
        assert_error(
            &get(s.addr, path, Some(&TOKEN[..TOKEN.len() - 1])),
            401,
            "unauthorized",
        );
        assert_eq!(get(s.addr, path, Some(TOKEN)).status, 200, "{path}");
    }
    // Operators' and orchestrators' endpoints stay open, and so does the dashboard's page (its
    // data comes from the API).
    assert_eq!(get(s.addr, "/metrics", None).status, 200);
    assert_eq!(get(s.addr, "/healthz", None).status, 200);
    assert_eq!(
        get(s.addr, "/readyz", None).status,
        503,
        "not ready: no processor"
    );
    for asset in [
        "/calibration",
        "/calibration/app.js",
        "/calibration/app.css",
        "/calibration/icon.svg",
    ] {
        let r = get(s.addr, asset, None);
        assert_eq!(r.status, 200, "{asset}");
        assert!(r
            .header("content-security-policy")
            .is_some_and(|v| v.contains("default-src 'none'")));
    }
}

/// Resolves a `$ref` of the document's components.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// The body has every property the schema requires, those whose schema is an enum take one of
/// its values, and nested references are followed one level.
fn check_body(doc: &Value, schema: &Value, body: &Value, context: &str) {
    let schema = resolve(doc, schema);
    for key in schema["required"].as_array().into_iter().flatten() {
        let key = key.as_str().unwrap();
        let value = body
            .get(key)
            .unwrap_or_else(|| panic!("{context}: {key} missing from {body}"));
        let property = resolve(doc, &schema["properties"][key]);
        if let Some(values) = property["enum"].as_array() {
            assert!(
                values.contains(value),
                "{context}: {key} = {value} not in {values:?}"
            );
        }
        if property["type"] == "array" {
            if let Some(first) = value.as_array().and_then(|a| a.first()) {
                check_body(doc, &property["items"], first, context);
            }
        }
    }
}

#[test]
fn the_openapi_document_describes_every_route_and_status_the_server_answers() {
    let s = server(Some(TOKEN));
    let r = get(s.addr, "/api/v1/openapi.json", Some(TOKEN));
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    documented.sort_unstable();
    let mut routes = feedback::http::api::PATHS.to_vec();
    routes.sort_unstable();
    assert_eq!(
        documented, routes,
        "the router's routes and the document's paths"
    );

    for (template, item) in paths {
        let methods: Vec<&String> = item.as_object().unwrap().keys().collect();
        assert_eq!(methods, ["get"], "{template}: the API is read-only");
        let op = &item["get"];
        let responses = op["responses"].as_object().unwrap();
        // Every case this test can make the server answer: each tenant kind, with and without the token.
        let mut requests: Vec<(String, Option<&str>)> = Vec::new();
        if template.contains("{tenant}") {
            let param = &op["parameters"][0];
            assert_eq!(param["name"], "tenant");
            assert_eq!(param["in"], "path");
            for tenant in ["miscal-002", "nobody", "Not_Valid", "unreadable"] {
                requests.push((template.replace("{tenant}", tenant), Some(TOKEN)));
            }
        } else {
            requests.push((template.clone(), Some(TOKEN)));
        }
        requests.push((requests[0].0.clone(), None));
        requests.push((requests[0].0.clone(), Some("not-the-token")));

        let mut seen = std::collections::BTreeSet::new();
        for (path, token) in &requests {
            let r = get(s.addr, path, *token);
            let status = r.status.to_string();
            let described = responses.get(&status).unwrap_or_else(|| {
                panic!("GET {path} answered {status}, which {template} does not describe")
            });
            let media = &described["content"]["application/json"];
            assert!(
                media.is_object(),
                "{template} {status}: no application/json content"
            );
            assert_eq!(
                r.header("content-type"),
                Some("application/json"),
                "GET {path}"
            );
            check_body(
                &doc,
                &media["schema"],
                &r.json(),
                &format!("GET {path} {status}"),
            );
            seen.insert(status);
        }
        for status in responses.keys() {
            // The tenant list fails only if its blocking task panics, which no request can cause.
            if template == "/api/v1/tenants" && status == "500" {
                continue;
            }
            assert!(
                seen.contains(status),
                "{template} describes {status}, never answered"
            );
        }
    }
    // Any other path answers with the document's Error schema too.
    let r = get(s.addr, "/api/v1/elsewhere", Some(TOKEN));
    assert_eq!(r.status, 404);
    check_body(
        &doc,
        &serde_json::json!({"$ref": "#/components/schemas/Error"}),
        &r.json(),
        "fallback",
    );
}
