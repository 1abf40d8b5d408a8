//! Image references: one line per case, through `check(input, expect)`.
//! A valid reference is shown as `registry | repository | tag | digest |
//! familiar form | API base URL`; a bad one as `error: MESSAGE`.

use hearth_machines::image::parse_reference;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn check(input: &str, expect: &str) {
    let got = match parse_reference(input) {
        Ok(r) => format!(
            "{} | {} | {} | {} | {} | {}",
            r.registry,
            r.repository,
            r.tag.as_deref().unwrap_or("-"),
            r.digest.as_deref().map(|d| &d[..15]).unwrap_or("-"),
            r,
            r.base_url()
        ),
        Err(e) => format!("error: {e}"),
    };
    assert_eq!(got, expect, "for input {input:?}");
}

#[test]
fn docker_hub_short_names() {
    let hub = "https://registry-1.docker.io";
    check("debian", &format!("docker.io | library/debian | latest | - | debian:latest | {hub}"));
    check("debian:bookworm", &format!("docker.io | library/debian | bookworm | - | debian:bookworm | {hub}"));
    check("library/alpine:3.20", &format!("docker.io | library/alpine | 3.20 | - | alpine:3.20 | {hub}"));
    check("bitnami/redis", &format!("docker.io | bitnami/redis | latest | - | bitnami/redis:latest | {hub}"));
    check("docker.io/debian", &format!("docker.io | library/debian | latest | - | debian:latest | {hub}"));
    check(
        "index.docker.io/library/debian:12",
        &format!("docker.io | library/debian | 12 | - | debian:12 | {hub}"),
    );
    check(
        "ab-c__d---e/f_g.h",
        &format!("docker.io | ab-c__d---e/f_g.h | latest | - | ab-c__d---e/f_g.h:latest | {hub}"),
    );
}

#[test]
fn other_registries_and_ports() {
    check("ghcr.io/o/r:tag", "ghcr.io | o/r | tag | - | ghcr.io/o/r:tag | https://ghcr.io");
    check(
        "127.0.0.1:5000/test:latest",
        "127.0.0.1:5000 | test | latest | - | 127.0.0.1:5000/test:latest | http://127.0.0.1:5000",
    );
    check(
        "127.0.0.1:5000/test",
        "127.0.0.1:5000 | test | latest | - | 127.0.0.1:5000/test:latest | http://127.0.0.1:5000",
    );
    check("127.1.2.3/a/b/c:v1", "127.1.2.3 | a/b/c | v1 | - | 127.1.2.3/a/b/c:v1 | http://127.1.2.3");
    check("localhost/x", "localhost | x | latest | - | localhost/x:latest | http://localhost");
    check("localhost:5000/x:1", "localhost:5000 | x | 1 | - | localhost:5000/x:1 | http://localhost:5000");
    check("[::1]:5000/x", "[::1]:5000 | x | latest | - | [::1]:5000/x:latest | http://[::1]:5000");
    check(
        "registry.example.com:8443/team/app:v2",
        "registry.example.com:8443 | team/app | v2 | - | registry.example.com:8443/team/app:v2 | https://registry.example.com:8443",
    );
    // A first component with uppercase letters is a registry host, as in Docker.
    check("Registry/x", "Registry | x | latest | - | Registry/x:latest | https://Registry");
    // Without a slash, a host-looking name is a Docker Hub repository.
    check(
        "127.0.0.1:5000",
        "docker.io | library/127.0.0.1 | 5000 | - | 127.0.0.1:5000 | https://registry-1.docker.io",
    );
}

#[test]
fn digests() {
    check(
        &format!("debian@{DIGEST}"),
        &format!(
            "docker.io | library/debian | - | sha256:01234567 | debian@{DIGEST} | https://registry-1.docker.io"
        ),
    );
    check(
        &format!("127.0.0.1:5000/t:v1@{DIGEST}"),
        &format!(
            "127.0.0.1:5000 | t | v1 | sha256:01234567 | 127.0.0.1:5000/t:v1@{DIGEST} | http://127.0.0.1:5000"
        ),
    );
}

#[test]
fn bad_references() {
    check(
        "",
        "error: `` is not a valid image reference: it is empty; name an image such as `debian:bookworm`",
    );
    check(
        "Debian",
        "error: `Debian` is not a valid image reference: repository names must be lowercase (`debian`)",
    );
    check(
        "ghcr.io/Owner/r",
        "error: `ghcr.io/Owner/r` is not a valid image reference: repository names must be lowercase (`owner/r`)",
    );
    check(
        "a::b",
        "error: `a::b` is not a valid image reference: `a:` is not a valid repository name component; use lowercase letters and digits, separated by `.`, `_`, `__` or `-`",
    );
    check(
        "debian:",
        "error: `debian:` is not a valid image reference: the tag `` is not valid; tags are up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`",
    );
    check(
        "debian:-x",
        "error: `debian:-x` is not a valid image reference: the tag `-x` is not valid; tags are up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`",
    );
    check(
        "a//b",
        "error: `a//b` is not a valid image reference: `` is not a valid repository name component; use lowercase letters and digits, separated by `.`, `_`, `__` or `-`",
    );
    check(
        "-a",
        "error: `-a` is not a valid image reference: `-a` is not a valid repository name component; use lowercase letters and digits, separated by `.`, `_`, `__` or `-`",
    );
    check(
        "a___b",
        "error: `a___b` is not a valid image reference: `a___b` is not a valid repository name component; use lowercase letters and digits, separated by `.`, `_`, `__` or `-`",
    );
    check("deb ian", "error: `deb ian` is not a valid image reference: it contains ' '");
    check(
        "debian@sha256:abc",
        "error: `debian@sha256:abc` is not a valid image reference: the digest `sha256:abc` is not `sha256:` and 64 lowercase hex digits",
    );
    check(
        "debian@md5:abc",
        "error: `debian@md5:abc` is not a valid image reference: the digest algorithm `md5` is not supported; use sha256",
    );
    check(
        "debian@abc",
        "error: `debian@abc` is not a valid image reference: the digest `abc` has no algorithm; write `sha256:` and 64 hex digits",
    );
    check(
        "host:port/x",
        "error: `host:port/x` is not a valid image reference: the registry port `port` is not a number",
    );
    check(
        "ex_ample.com/x",
        "error: `ex_ample.com/x` is not a valid image reference: the registry host `ex_ample.com` is not a valid host name",
    );
    check(
        "/x",
        "error: `/x` is not a valid image reference: `` is not a valid repository name component; use lowercase letters and digits, separated by `.`, `_`, `__` or `-`",
    );
    check("ghcr.io/", "error: `ghcr.io/` is not a valid image reference: the repository name is empty");
}
