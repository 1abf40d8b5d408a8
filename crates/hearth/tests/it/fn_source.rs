//! Handlers from source through the real binary (issue 18, items 1 to 3):
//! a JavaScript and a Python handler written by `hearth fn new`, edited,
//! deployed with `hearth fn deploy`, answering with key-value and config,
//! shown back with `hearth fn show`; and broken ones refused with the line
//! the build tool points at, the serving version untouched.
//!
//! The build tools are the ones `make setup` installs (componentize-js and
//! componentize-py under ~/.cache/hearth/fn); without them these fail.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_testkit::{Daemon, failure, success};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// One HTTP/1.0 request to the ingress: (status, body).
fn request(port: u16, host: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the ingress");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("an answer");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Answers one HTTP/1.1 request with "pong " and its body.
fn pong(mut stream: TcpStream) {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let answer = format!("pong {}", String::from_utf8_lossy(&body));
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

/// Waits until `version` of `name` serves Cranelift's code (a 12 to 20 MB
/// component takes a while on a busy machine).
async fn optimized(daemon: &Daemon, name: &str, version: u32) -> hearth_client::types::AppDetail {
    let started = std::time::Instant::now();
    loop {
        let app = daemon.client().app(name).await.expect("the app");
        let tier = app.summary.tier.as_ref().map(|t| t.tier);
        if app.summary.serving == Some(version) && tier == Some(hearth_client::types::CodeTier::Optimized) {
            return app;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{name} {version} was not optimized in 600 s: {app:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ingress_port(daemon: &Daemon) -> u16 {
    let status = daemon.client().status().await.expect("status");
    status.ingress.and_then(|a| a.rsplit(':').next().and_then(|p| p.parse().ok())).expect("an ingress port")
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.display().to_string()
}

const JS: &str = r#"export default {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/out") {
      const answer = await fetch(config.get("upstream"), { method: "POST", body: "ping" });
      return new Response(`upstream said ${answer.status} ${await answer.text()}`);
    }
    if (request.method === "POST") {
      kv.set("note", await request.text());
    }
    const hits = kv.increment("hits");
    return new Response(`js ${url.pathname} hits=${hits} note=${kv.get("note")} greeting=${config.get("greeting")}\n`);
  },
};
"#;

const PY: &str = r#"from hearth import Response, config, http, kv


def handle(request):
    if request.path == "/out":
        answer = http.fetch(config.get("upstream"), method="POST", body="ping")
        return Response(f"upstream said {answer.status} {answer.text()}")
    if request.method == "POST":
        kv.set("note", request.text())
    hits = kv.increment("hits")
    return Response(f"py {request.path} hits={hits} note={kv.get('note')} greeting={config.get('greeting')}\n")
"#;

/// Deploys `source` as `name` (`lang` its extension), with a manifest
/// beside it that sets `greeting`, and checks what it answers, what `fn
/// show` and `app versions` say; then that two broken handlers are refused
/// with what is wrong, and the first one keeps serving.
async fn deploys_answers_and_refuses_broken_ones(
    lang: &str,
    source: &str,
    syntax_error: (&str, &str),
    no_handler: (&str, &str),
) {
    let daemon = Daemon::start(BIN).await;
    let port = ingress_port(&daemon).await;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("hello-{lang}");
    let host = format!("{name}.localhost");

    // A starter, then ours in its place.
    let starter = dir.path().join(format!("starter.{lang}"));
    let out =
        success(&daemon.cli(&["fn", "new", &name, "--lang", lang, "--out", &starter.display().to_string()]));
    assert!(out.contains(&format!("hearth fn deploy {name}")), "{out}");
    assert!(std::fs::read_to_string(&starter).unwrap().contains("kv.increment(\"visits\")"));
    let again =
        failure(&daemon.cli(&["fn", "new", &name, "--lang", lang, "--out", &starter.display().to_string()]));
    assert!(again.contains("exists already"), "{again}");

    // Something for the handler to call: it answers "pong <body>".
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in upstream.incoming().flatten() {
            pong(stream);
        }
    });
    let file = write(&dir.path().join(format!("handler.{lang}")), source);
    write(
        &dir.path().join("hearth.toml"),
        &format!(
            "outbound = [\"http://127.0.0.1:{upstream_port}\"]\n[config]\ngreeting = \"hi\"\n\
             upstream = \"http://127.0.0.1:{upstream_port}/ping\"\n"
        ),
    );
    let out = success(&daemon.cli(&["fn", "deploy", &name, &file]));
    assert!(out.contains(&format!("deployed {name} version 1")), "{out}");
    assert_eq!(
        request(port, &host, "GET", "/a", ""),
        (200, format!("{lang} /a hits=1 note={} greeting=hi\n", if lang == "js" { "null" } else { "None" }))
    );
    assert_eq!(
        request(port, &host, "POST", "/b", "x"),
        (200, format!("{lang} /b hits=2 note=x greeting=hi\n"))
    );

    // The code that serves, and where each version came from.
    assert_eq!(success(&daemon.cli(&["fn", "show", &name])), source);
    let shown = daemon.client().app_source(&name, Some(1)).await.expect("the source through the API");
    assert_eq!((shown.lang.as_str(), shown.source.as_str()), (lang, source));
    let versions = success(&daemon.cli(&["app", "versions", &name]));
    assert!(versions.contains(&format!("handler.{lang}")), "{versions}");

    // Broken handlers: refused with the place, and version 1 keeps serving.
    for (broken, expected) in [syntax_error, no_handler] {
        let file = write(&dir.path().join(format!("handler.{lang}")), broken);
        let said = failure(&daemon.cli(&["fn", "deploy", &name, &file]));
        assert!(said.contains(expected), "expected {expected:?} in:\n{said}");
        assert!(said.contains("the serving version is untouched"), "{said}");
    }
    assert_eq!(
        request(port, &host, "GET", "/c", ""),
        (200, format!("{lang} /c hits=3 note=x greeting=hi\n"))
    );
    let app = daemon.client().app(&name).await.expect("the app");
    assert_eq!((app.summary.active, app.versions.len()), (1, 1), "nothing was added");

    // One line changed: the engine's functions, unchanged, come from the
    // cache of compiled functions; only what changed is compiled.
    optimized(&daemon, &name, 1).await;
    let comment = if lang == "js" { "//" } else { "#" };
    let file =
        write(&dir.path().join(format!("handler.{lang}")), &format!("{source}{comment} one line more\n"));
    let out = success(&daemon.cli(&["fn", "deploy", &name, &file]));
    assert!(out.contains(&format!("deployed {name} version 2")), "{out}");
    let app = optimized(&daemon, &name, 2).await;
    let cache =
        app.summary.tier.and_then(|t| t.function_cache).expect("a compile that used the function cache");
    assert!(cache.hits > 0 && cache.misses * 10 <= cache.hits + cache.misses, "{cache:?}");
    let text = success(&daemon.cli(&["app", "inspect", &name]));
    assert!(text.contains(&format!("functions   {} from the cache", cache.hits)), "{text}");
    if lang == "js" {
        // The engine, unchanged, was compiled once: version 2 served
        // Cranelift's code from its deploy on, only its rest compiled.
        assert!(out.contains("cranelift's optimized code serves"), "{out}");
        assert!(text.contains("is compiled once for every version built on it"), "{text}");
    }
    assert_eq!(
        request(port, &host, "GET", "/d", ""),
        (200, format!("{lang} /d hits=4 note=x greeting=hi\n"))
    );

    // An app that does not exist has no source to show.
    let said = failure(&daemon.cli(&["fn", "show", "nobody"]));
    assert!(said.contains("nobody"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_javascript_handler_deploys_from_source_and_a_broken_one_is_refused_with_its_line() {
    deploys_answers_and_refuses_broken_ones(
        "js",
        JS,
        (
            "export default {\n  async fetch(request) {\n    return new Response(\"x\" +);\n  },\n};\n",
            "handler.js:3:",
        ),
        ("export const answer = 42;\n", "exports no fetch handler"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_handler_deploys_from_source_and_a_broken_one_is_refused_with_its_line() {
    deploys_answers_and_refuses_broken_ones(
        "py",
        PY,
        ("from hearth import Response\n\n\ndef handle(request)\n    return Response('x')\n", "line 4"),
        ("ANSWER = 42\n", "defines no handle(request)"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_in_an_unknown_language_or_too_large_is_refused_before_any_build() {
    let daemon = Daemon::start(BIN).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir.path().join("handler.rb"), "puts 1\n");
    let said = failure(&daemon.cli(&["fn", "deploy", "ruby", &file]));
    assert!(said.contains("--lang js|py"), "{said}");
    let big = write(&dir.path().join("big.js"), &format!("// {}\n", "x".repeat(70 << 10)));
    let said = failure(&daemon.cli(&["fn", "deploy", "big", &big]));
    assert!(said.contains("over the limit") || said.contains("larger than"), "{said}");
    // Through the API, which checks for itself.
    let body = hearth_client::types::DeploySource {
        lang: "js".into(),
        source: format!("// {}\n", "x".repeat(70 << 10)),
        manifest: None,
        routes: vec![],
    };
    let error = daemon.client().deploy_source("big", &body).await.unwrap_err().to_string();
    assert!(error.contains("65536 bytes"), "{error}");
    let body = hearth_client::types::DeploySource {
        lang: "ts".into(),
        source: "x".into(),
        manifest: None,
        routes: vec![],
    };
    let error = daemon.client().deploy_source("ts", &body).await.unwrap_err().to_string();
    assert!(error.contains("give js or py"), "{error}");
    assert!(daemon.client().apps().await.unwrap().apps.is_empty(), "nothing was deployed");

    // A component deployed with `app deploy` has no source to show.
    let hello = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/apps/hello/target/wasm32-wasip2/release/hello.wasm");
    assert!(hello.is_file(), "{} is missing: run `make examples`", hello.display());
    success(&daemon.cli(&["app", "deploy", "hello", &hello.display().to_string()]));
    let said = failure(&daemon.cli(&["fn", "show", "hello"]));
    assert!(said.contains("deployed as a component, not from source"), "{said}");
}
