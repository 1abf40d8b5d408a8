//! Test support for the image tests: a real registry (Debian's
//! `docker-registry`) on a free loopback port, a small two-layer test image
//! built with umoci and pushed with skopeo, and ext4 inspection through
//! debugfs. Everything started here is killed, and every directory removed,
//! on drop, so a failing test leaves nothing behind.

#![allow(dead_code, unreachable_pub)] // Each test file uses a part.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hearth_machines::image::Progress;

pub const USER: &str = "hearth";
pub const PASSWORD: &str = "s3cret";
/// bcrypt of [`PASSWORD`], made once with Python's `crypt` module (cost 5),
/// so the tests need neither apache2-utils nor a bcrypt library.
const PASSWORD_BCRYPT: &str = "$2b$05$F3jeHIPXaQ4UhAoVcoDAMeLa8/xsbnN0GpQzyCDqmXz1PD3AbTp5C";

/// How a test registry checks who is asking.
#[derive(Debug)]
pub enum Auth {
    Anonymous,
    /// HTTP Basic against an htpasswd file with [`USER`]:[`PASSWORD`].
    Htpasswd,
    /// Bearer tokens from a [`TokenServer`] the registry trusts.
    Token,
}

/// `docker-registry` on 127.0.0.1, with its storage in a temporary dir.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    token_server: Option<TokenServer>,
}

impl Registry {
    pub fn start(auth: Auth) -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let token_server = matches!(auth, Auth::Token).then(|| TokenServer::start(dir.path()));
        let auth_config = match (&auth, &token_server) {
            (Auth::Anonymous, _) => String::new(),
            (Auth::Htpasswd, _) => {
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{USER}:{PASSWORD_BCRYPT}\n")).unwrap();
                format!("auth:\n  htpasswd:\n    realm: hearth-test\n    path: {}\n", htpasswd.display())
            }
            (Auth::Token, Some(server)) => format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                server.port,
                TokenServer::SERVICE,
                TokenServer::ISSUER,
                server.cert.display()
            ),
            (Auth::Token, None) => unreachable!(),
        };
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: hearth-test\n{auth_config}",
                    dir.path().join("data").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry runs (apt-get install docker-registry)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break; // Most likely the port was taken meanwhile: try another.
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Registry { child, port, dir, token_server };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "docker-registry did not start; its log:\n{}",
            std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's access log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Whether pushing needs [`USER`]'s credentials.
    pub fn is_private(&self) -> bool {
        std::fs::read_to_string(self.dir.path().join("config.yml")).unwrap_or_default().contains("auth:")
    }

    /// How many requests its token server has answered.
    pub fn token_requests(&self) -> usize {
        self.token_server.as_ref().map_or(0, |t| t.requests.load(Ordering::SeqCst))
    }

    /// How many blob downloads (GETs) the registry has served.
    pub fn blob_gets(&self) -> usize {
        self.log().lines().filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:")).count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An OCI layout holding the test image, tag `test`:
/// layer 1 has `/bin/busybox` (the host's), `/bin/sh -> busybox`,
/// `/etc/kept.txt` and `/etc/removed.txt`; layer 2 deletes `removed.txt`
/// (a whiteout) and adds `/etc/added.txt`. Its config sets an entrypoint,
/// an environment variable and a working directory.
#[derive(Debug)]
pub struct TestImage {
    pub dir: tempfile::TempDir,
}

impl TestImage {
    pub fn build() -> TestImage {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let bundle = dir.path().join("bundle");
        let image = format!("{}:test", layout.display());
        run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
        run(Command::new("umoci").args(["new", "--image", &image]));
        run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle));
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("the host has /bin/busybox");
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
        std::fs::write(rootfs.join("etc/kept.txt"), "kept\n").unwrap();
        std::fs::write(rootfs.join("etc/removed.txt"), "doomed\n").unwrap();
        run(Command::new("umoci").args(["repack", "--refresh-bundle", "--image", &image]).arg(&bundle));
        std::fs::remove_file(rootfs.join("etc/removed.txt")).unwrap();
        std::fs::write(rootfs.join("etc/added.txt"), "added\n").unwrap();
        run(Command::new("umoci").args(["repack", "--refresh-bundle", "--image", &image]).arg(&bundle));
        run(Command::new("umoci").args([
            "config",
            "--image",
            &image,
            "--config.entrypoint",
            "/bin/sh",
            "--config.cmd",
            "-c",
            "--config.cmd",
            "echo hello",
            "--config.env",
            "HEARTH=1",
            "--config.workingdir",
            "/etc",
        ]));
        TestImage { dir }
    }

    /// `oci:LAYOUT:test`, for skopeo.
    pub fn source(&self) -> String {
        format!("oci:{}:test", self.dir.path().join("layout").display())
    }

    /// Pushes the image to `registry` as `REPOSITORY:TAG`.
    pub fn push(&self, registry: &Registry, destination: &str, extra: &[&str]) {
        self.push_from(&self.source(), registry, destination, extra);
    }

    /// Pushes from any skopeo source.
    pub fn push_from(&self, source: &str, registry: &Registry, destination: &str, extra: &[&str]) {
        let mut command = Command::new("skopeo");
        command.args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"]).args(extra);
        if registry.is_private() {
            command.arg(format!("--dest-creds={USER}:{PASSWORD}"));
        }
        command.arg(source).arg(format!("docker://{}/{destination}", registry.host()));
        run(&mut command);
    }

    /// The image's layers uncompressed, as a skopeo `dir:` source, so a
    /// push can compress them another way (`--dest-compress-format zstd`).
    pub fn uncompressed(&self) -> String {
        let dir = self.dir.path().join("plain");
        if !dir.exists() {
            run(Command::new("skopeo")
                .args(["--insecure-policy", "copy", "-q", "--dest-decompress"])
                .arg(self.source())
                .arg(format!("dir:{}", dir.display())));
        }
        format!("dir:{}", dir.display())
    }
}

/// Runs a command and panics with its output if it fails.
pub fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `debugfs -R REQUEST FILE`: stdout, and whether stderr says a path was
/// not found.
fn debugfs(image: &Path, request: &str) -> (String, bool) {
    let output =
        Command::new("debugfs").arg("-R").arg(request).arg(image).output().expect("debugfs runs (e2fsprogs)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    (String::from_utf8_lossy(&output.stdout).into_owned(), stderr.contains("not found"))
}

/// The content of `path` in the ext4 file, or `None` if it is not there.
pub fn ext4_cat(image: &Path, path: &str) -> Option<String> {
    match debugfs(image, &format!("cat {path}")) {
        (_, true) => None,
        (out, false) => Some(out),
    }
}

/// debugfs's `stat` of `path`, or `None` if it is not there.
pub fn ext4_stat(image: &Path, path: &str) -> Option<String> {
    match debugfs(image, &format!("stat {path}")) {
        (_, true) => None,
        (out, false) => Some(out),
    }
}

/// Collects progress events.
#[derive(Debug, Default)]
pub struct Events(pub Vec<Progress>);

impl Events {
    pub fn sink(&mut self) -> impl FnMut(Progress) + '_ {
        |p| self.0.push(p)
    }

    pub fn downloads(&self) -> usize {
        self.0.iter().filter(|p| matches!(p, Progress::Downloading { .. })).count()
    }
}

/// A token service for [`Auth::Token`]: it answers `GET /token` with a
/// signed JWT granting pull and push on `hearth-test` to [`USER`] with
/// [`PASSWORD`] (HTTP Basic), and 401 to anyone else. The registry checks
/// the token's signature against the certificate made here with openssl.
#[derive(Debug)]
pub struct TokenServer {
    pub port: u16,
    cert: PathBuf,
    /// How many token requests it has answered.
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    const SERVICE: &str = "hearth-test-registry";
    const ISSUER: &str = "hearth-test-issuer";

    fn start(dir: &Path) -> TokenServer {
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=hearth-test-token",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap()
            .stdout;
        let b64 = base64::engine::general_purpose::STANDARD;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = format!(r#"{{"typ":"JWT","alg":"RS256","x5c":["{}"]}}"#, b64.encode(der));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims = format!(
            r#"{{"iss":"{}","sub":"{USER}","aud":"{}","exp":{},"nbf":{},"iat":{},"jti":"hearth-test","access":[{{"type":"repository","name":"hearth-test","actions":["pull","push"]}}]}}"#,
            Self::ISSUER,
            Self::SERVICE,
            now + 3600,
            now - 60,
            now - 60
        );
        let signing_input = format!("{}.{}", url.encode(header), url.encode(claims));
        let mut sign = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        sign.stdin.take().unwrap().write_all(signing_input.as_bytes()).unwrap();
        let signature = sign.wait_with_output().unwrap().stdout;
        let token = format!("{signing_input}.{}", url.encode(signature));

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let expected = b64.encode(format!("{USER}:{PASSWORD}"));
        let requests = Arc::new(AtomicUsize::new(0));
        let thread = {
            let stop = stop.clone();
            let requests = requests.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let _ = serve_token(stream, &expected, &token);
                    }
                }
            })
        };
        TokenServer { port, cert, requests, stop, thread: Some(thread) }
    }
}

fn serve_token(mut stream: TcpStream, expected: &str, token: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorized = value.trim().split_once(' ').is_some_and(|(scheme, credentials)| {
                scheme.eq_ignore_ascii_case("basic") && credentials == expected
            });
        }
    }
    let (status, body) = if authorized {
        ("200 OK", format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":3600}}"#))
    } else {
        ("401 Unauthorized", r#"{"details":"bad credentials"}"#.to_owned())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
