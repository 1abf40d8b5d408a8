//! Handlers deployed as source: `hearth fn deploy NAME handler.js` (or
//! `handler.py`) becomes an app like any other, built here into a
//! `wasi:http` component.
//!
//! - **JavaScript** is built with componentize-js (StarlingMonkey, a
//!   SpiderMonkey engine in WebAssembly, pre-initialised with the handler):
//!   hearth's `entry.js` imports `prelude.js` (the `kv` and `config`
//!   globals), then the handler, and answers each request through its
//!   `fetch(request)`.
//! - **Python** is built with componentize-py (CPython in WebAssembly):
//!   hearth's `app.py` turns each request into a `hearth.Request`, calls the
//!   handler's `handle(request)` and sends the `hearth.Response` back.
//!
//! Both target the world in `crates/apps/fn/wit` (`wasi:http/proxy` 0.2.3,
//! key-value, config). The tools live in [`Toolchains::dir`], installed by
//! `scripts/setup.sh`; the daemon runs them in a temporary directory of
//! their own, with a cleared environment, a time limit, a cap on the size of
//! any file they write and, when the daemon is root, a network namespace
//! with no interface but loopback: a build needs nothing from the network.
//! The handler's code itself only ever runs inside WebAssembly, at build
//! time (pre-initialisation) as when it serves.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The largest source accepted: a handler is a page or two of code, and
/// the source is kept with each version in the app's record.
pub const MAX_SOURCE: usize = 64 << 10;

/// How long a build may run: a cold JavaScript build takes 4 to 20 s on a
/// busy 2-core machine, a Python one 9 to 15 s.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(120);

/// The largest file a build may write (the component is 12 to 20 MB).
pub const MAX_BUILD_FILE: u64 = 256 << 20;

/// A handler's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Js,
    Py,
}

impl Lang {
    /// The language a file name's extension says.
    pub fn from_file_name(name: &str) -> Option<Lang> {
        match Path::new(name).extension()?.to_str()? {
            "js" | "mjs" => Some(Lang::Js),
            "py" => Some(Lang::Py),
            _ => None,
        }
    }

    /// The name the handler has in the build directory, and in messages.
    pub fn file(self) -> &'static str {
        match self {
            Lang::Js => "handler.js",
            Lang::Py => "handler.py",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Js => "js",
            Lang::Py => "py",
        }
    }

    fn display(self) -> &'static str {
        match self {
            Lang::Js => "JavaScript",
            Lang::Py => "Python",
        }
    }
}

impl std::str::FromStr for Lang {
    type Err = String;

    fn from_str(s: &str) -> Result<Lang, String> {
        match s {
            "js" | "javascript" => Ok(Lang::Js),
            "py" | "python" => Ok(Lang::Py),
            other => Err(format!("{other:?} is not a handler language: give js or py")),
        }
    }
}

/// A handler's source, kept with the version built from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub lang: Lang,
    pub text: String,
}

impl Source {
    /// Checks what can be checked before a build: size and text.
    pub fn check(&self) -> Result<(), Error> {
        if self.text.len() > MAX_SOURCE {
            return Err(Error::Invalid(format!(
                "{} is {} bytes, over the {MAX_SOURCE} bytes a handler may have: move data out of the code \
                 (into key-value or config), or build a component and use `hearth app deploy`",
                self.lang.file(),
                self.text.len()
            )));
        }
        if self.text.trim().is_empty() {
            return Err(Error::Invalid(format!(
                "{} is empty: write a handler, or start from `hearth fn new NAME --lang {}`",
                self.lang.file(),
                self.lang.as_str()
            )));
        }
        Ok(())
    }
}

/// A starter handler, as `hearth fn new` writes it.
pub fn starter(lang: Lang) -> &'static str {
    match lang {
        Lang::Js => include_str!("../fn/js/starter.js"),
        Lang::Py => include_str!("../fn/py/starter.py"),
    }
}

/// The files every build directory gets: the world, and each language's
/// wrapper, as (path in the build directory, text). Each is kept in
/// `crates/apps/fn/DIR/PATH`.
macro_rules! files {
    ($dir:literal: $($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../fn/", $dir, "/", $path)))),*]
    };
}

const WIT: &[(&str, &str)] = files!(".":
    "wit/world.wit",
    "wit/deps/config/store.wit",
    "wit/deps/config/world.wit",
    "wit/deps/keyvalue/atomic.wit",
    "wit/deps/keyvalue/batch.wit",
    "wit/deps/keyvalue/store.wit",
    "wit/deps/keyvalue/watch.wit",
    "wit/deps/keyvalue/world.wit",
    "wit/deps/wasi-cli/command.wit",
    "wit/deps/wasi-cli/environment.wit",
    "wit/deps/wasi-cli/exit.wit",
    "wit/deps/wasi-cli/imports.wit",
    "wit/deps/wasi-cli/run.wit",
    "wit/deps/wasi-cli/stdio.wit",
    "wit/deps/wasi-cli/terminal.wit",
    "wit/deps/wasi-clocks/monotonic-clock.wit",
    "wit/deps/wasi-clocks/timezone.wit",
    "wit/deps/wasi-clocks/wall-clock.wit",
    "wit/deps/wasi-clocks/world.wit",
    "wit/deps/wasi-filesystem/preopens.wit",
    "wit/deps/wasi-filesystem/types.wit",
    "wit/deps/wasi-filesystem/world.wit",
    "wit/deps/wasi-http/handler.wit",
    "wit/deps/wasi-http/proxy.wit",
    "wit/deps/wasi-http/types.wit",
    "wit/deps/wasi-io/error.wit",
    "wit/deps/wasi-io/poll.wit",
    "wit/deps/wasi-io/streams.wit",
    "wit/deps/wasi-io/world.wit",
    "wit/deps/wasi-random/insecure-seed.wit",
    "wit/deps/wasi-random/insecure.wit",
    "wit/deps/wasi-random/random.wit",
    "wit/deps/wasi-random/world.wit",
    "wit/deps/wasi-sockets/instance-network.wit",
    "wit/deps/wasi-sockets/ip-name-lookup.wit",
    "wit/deps/wasi-sockets/network.wit",
    "wit/deps/wasi-sockets/tcp-create-socket.wit",
    "wit/deps/wasi-sockets/tcp.wit",
    "wit/deps/wasi-sockets/udp-create-socket.wit",
    "wit/deps/wasi-sockets/udp.wit",
    "wit/deps/wasi-sockets/world.wit",
);

/// Files written into a build directory: (path, text).
type Files = &'static [(&'static str, &'static str)];

const JS: &[(&str, &str)] = files!("js": "prelude.js", "entry.js", "build.mjs");
const PY: &[(&str, &str)] = files!("py": "hearth.py", "app.py");

/// Where the build tools are, and how builds are bounded.
#[derive(Debug, Clone)]
pub struct Toolchains {
    dir: PathBuf,
    timeout: Duration,
    /// Where build directories are made; the system's temporary directory
    /// when `None`.
    scratch: Option<PathBuf>,
    /// Whether a JavaScript build also takes the long way and fails unless
    /// its template made the same component (`build.mjs`; tests only).
    check_template: bool,
}

impl Toolchains {
    pub fn new(dir: PathBuf) -> Toolchains {
        Toolchains { dir, timeout: BUILD_TIMEOUT, scratch: None, check_template: false }
    }

    /// With another time limit (tests make one run out).
    pub fn with_timeout(mut self, timeout: Duration) -> Toolchains {
        self.timeout = timeout;
        self
    }

    /// With build directories made in `scratch` (a test looks there for
    /// what a build left, and not at other builds on the machine).
    pub fn with_scratch(mut self, scratch: PathBuf) -> Toolchains {
        self.scratch = Some(scratch);
        self
    }

    #[cfg(test)]
    fn checking_templates(mut self) -> Toolchains {
        self.check_template = true;
        self
    }

    /// Where `scripts/setup.sh` installs the tools: `$HEARTH_FN_TOOLS`, or
    /// `hearth/fn` in the user's cache directory (`$XDG_CACHE_HOME`, else
    /// `~/.cache`).
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("HEARTH_FN_TOOLS").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/var/cache"));
        cache.join("hearth").join("fn")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the JavaScript build keeps the StarlingMonkey engine with
    /// hearth's world spliced in (`build.mjs` says why). The build is
    /// handed it explicitly, its environment being cleared; it may write
    /// there, and a daemon that cannot only loses the cache.
    pub fn spliced_dir(&self) -> PathBuf {
        self.dir.join("js").join("spliced")
    }

    /// Builds `source` into a component. Blocking: it runs the build tool
    /// and waits for it (seconds).
    pub fn build(&self, source: &Source) -> Result<Vec<u8>, Error> {
        source.check()?;
        let (mut command, wrappers) = self.command(source.lang)?;
        let scratch = self.scratch.clone().unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("hearth-fn-")
            .tempdir_in(&scratch)
            .map_err(|e| Error::Io { path: scratch.clone(), source: e })?;
        for (path, text) in WIT.iter().chain(wrappers) {
            write(&dir.path().join(path), text.as_bytes())?;
        }
        write(&dir.path().join(source.lang.file()), source.text.as_bytes())?;
        let (stdout, stderr) = (dir.path().join(".stdout"), dir.path().join(".stderr"));
        command
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(create(&stdout)?)
            .stderr(create(&stderr)?)
            .process_group(0);
        let file = source.lang.file().to_owned();
        let started = Instant::now();
        let mut child = command.spawn().map_err(|e| self.cannot_run(source.lang, e))?;
        let status = loop {
            if let Some(status) =
                child.try_wait().map_err(|e| Error::Internal(format!("waiting for a build: {e}")))?
            {
                break status;
            }
            if started.elapsed() > self.timeout {
                let group = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Err(Error::BuildStopped {
                    file,
                    why: format!("ran over its {} s time limit and was stopped", self.timeout.as_secs()),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Whatever the tool left behind in its group goes with it.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let said = read_tail(&stderr) + &read_tail(&stdout);
        let said = said.replace(&format!("{}/", dir.path().display()), "");
        use std::os::unix::process::ExitStatusExt;
        if status.signal() == Some(nix::sys::signal::Signal::SIGXFSZ as i32) {
            return Err(Error::BuildStopped {
                file,
                why: format!("wrote a file over the {} MiB limit and was stopped", MAX_BUILD_FILE >> 20),
            });
        }
        if !status.success() {
            return Err(Error::Build { file, message: explain(source.lang, &said) });
        }
        let output = dir.path().join("handler.wasm");
        std::fs::read(&output).map_err(|_| Error::Build {
            file,
            message: format!("the build tool ended well but wrote no component; it said:\n{}", said.trim()),
        })
    }

    /// The command that builds a language's handler, and its wrappers.
    fn command(&self, lang: Lang) -> Result<(Command, Files), Error> {
        match lang {
            Lang::Js => {
                let module =
                    self.dir.join("js/node_modules/@bytecodealliance/componentize-js/src/componentize.js");
                if !module.is_file() {
                    return Err(Error::NoToolchain {
                        lang: "JavaScript",
                        tool: "componentize-js",
                        dir: self.dir.join("js"),
                    });
                }
                let on_path = std::env::var_os("PATH")
                    .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("node").is_file()));
                if !on_path {
                    return Err(Error::NoToolchain {
                        lang: "JavaScript",
                        tool: "Node.js (node on PATH)",
                        dir: self.dir.join("js"),
                    });
                }
                let mut command = bounded("node");
                // One garbage-collector thread: the splicer and jco grow
                // their WebAssembly memory a page at a time, and in Node 20
                // each grow sets off a full collection, whose helper threads
                // cost more than they save. It took a build (the splice
                // cached) from 7.3 s of CPU to 4.0 s on the 2-core machine.
                command
                    .args(["--single-threaded-gc", "build.mjs"])
                    .env("HEARTH_COMPONENTIZE_JS", module)
                    .env("HEARTH_FN_SPLICED", self.spliced_dir());
                if self.check_template {
                    command.env("HEARTH_FN_TEMPLATE_CHECK", "1");
                }
                Ok((command, JS))
            }
            Lang::Py => {
                let tool = self.dir.join("py/bin/componentize-py");
                if !tool.is_file() {
                    return Err(Error::NoToolchain {
                        lang: "Python",
                        tool: "componentize-py",
                        dir: self.dir.join("py"),
                    });
                }
                let mut command = bounded(tool);
                command.args(["-d", "wit", "-w", "handler", "componentize", "app", "-o", "handler.wasm"]);
                Ok((command, PY))
            }
        }
    }

    fn cannot_run(&self, lang: Lang, error: std::io::Error) -> Error {
        match (lang, error.kind()) {
            (_, std::io::ErrorKind::NotFound) => Error::Internal(format!(
                "cannot start the {} build: util-linux's unshare and prlimit are not on PATH; install util-linux",
                lang.display()
            )),
            _ => Error::Internal(format!("cannot start the {} build: {error}", lang.display())),
        }
    }
}

/// `program`, run with no network when the daemon is root (a network
/// namespace of its own, with only a loopback: util-linux's `unshare`;
/// only root may make one, and the tools never use the network) and with
/// no file over [`MAX_BUILD_FILE`] (`prlimit`).
fn bounded(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = if nix::unistd::geteuid().is_root() {
        let mut command = Command::new("unshare");
        command.args(["--net", "--", "prlimit"]);
        command
    } else {
        Command::new("prlimit")
    };
    command.arg(format!("--fsize={MAX_BUILD_FILE}:{MAX_BUILD_FILE}")).arg("--").arg(program);
    // Nothing of the daemon's environment (its tokens, say) but PATH.
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("LANG", "C.UTF-8");
    command
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::Io { path: parent.to_owned(), source: e })?;
    }
    std::fs::write(path, bytes).map_err(|e| Error::Io { path: path.to_owned(), source: e })
}

fn create(path: &Path) -> Result<std::fs::File, Error> {
    std::fs::File::create(path).map_err(|e| Error::Io { path: path.to_owned(), source: e })
}

/// The last 16 KiB of what a build printed.
fn read_tail(path: &Path) -> String {
    let mut text = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_end(&mut text);
    }
    let start = text.len().saturating_sub(16 << 10);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// What a failed build said, cut to what points at the handler: the
/// tools' own stack frames and banners go.
fn explain(lang: Lang, said: &str) -> String {
    let lines: Vec<&str> = said.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    let kept: Vec<&str> = match lang {
        // componentize-js: "Failed to initialize component:", "Exception
        // while evaluating top-level script", then "handler.js:3:30
        // SyntaxError: ...". Node's own stack ("    at ...") is noise.
        Lang::Js => lines
            .into_iter()
            .filter(|l| !l.trim_start().starts_with("at ") && !l.starts_with("Node.js v"))
            .filter(|l| {
                !l.starts_with("Failed to initialize component")
                    && !l.starts_with("Exception while evaluating")
            })
            .collect(),
        // componentize-py: the guest's own traceback comes after
        // "AssertionError: " and before "Caused by:" (the host tool's frames
        // and backtrace). Of the guest's frames, hearth's app.py and the
        // runtime's are noise; the handler's (`File "handler.py", line 3`,
        // its code line and caret) and the error stay.
        Lang::Py => {
            let inner = said.split_once("AssertionError: ").map_or(said, |(_, rest)| rest);
            let inner = inner.split("\nCaused by:").next().unwrap_or(inner);
            let mut kept = Vec::new();
            let mut skipping: Option<usize> = None;
            for line in inner.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()) {
                let indent = line.len() - line.trim_start().len();
                if let Some(frame) = skipping {
                    if indent > frame {
                        continue;
                    }
                    skipping = None;
                }
                let trimmed = line.trim_start();
                if trimmed.starts_with("File \"") && !trimmed.contains(Lang::Py.file()) {
                    skipping = Some(indent);
                    continue;
                }
                if trimmed.starts_with("Traceback (most recent call last)") {
                    continue;
                }
                kept.push(line);
            }
            return finish(kept.iter().map(|l| l.replace("\"/0/", "\"")).collect());
        }
    };
    finish(kept.into_iter().map(str::to_owned).collect())
}

/// At most the last 30 lines.
fn finish(kept: Vec<String>) -> String {
    let start = kept.len().saturating_sub(30);
    let text = kept[start..].join("\n");
    if text.is_empty() { "the build tool failed and said nothing".into() } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_extension_names_its_language() {
        assert_eq!(Lang::from_file_name("handler.js"), Some(Lang::Js));
        assert_eq!(Lang::from_file_name("dir/h.mjs"), Some(Lang::Js));
        assert_eq!(Lang::from_file_name("app.py"), Some(Lang::Py));
        assert_eq!(Lang::from_file_name("app.ts"), None);
        assert_eq!(Lang::from_file_name("Makefile"), None);
        assert_eq!("python".parse::<Lang>(), Ok(Lang::Py));
        assert!("ruby".parse::<Lang>().unwrap_err().contains("js or py"));
    }

    #[test]
    fn a_source_too_large_or_empty_is_refused_before_any_build() {
        let big = Source { lang: Lang::Js, text: "x".repeat(MAX_SOURCE + 1) };
        assert!(big.check().unwrap_err().to_string().contains("over the 65536 bytes"));
        let empty = Source { lang: Lang::Py, text: " \n".into() };
        assert!(empty.check().unwrap_err().to_string().contains("hearth fn new NAME --lang py"));
    }

    #[test]
    fn missing_tools_say_how_to_install_them() {
        let dir = tempfile::tempdir().unwrap();
        let tools = Toolchains::new(dir.path().to_owned());
        for lang in [Lang::Js, Lang::Py] {
            let error = tools.build(&Source { lang, text: starter(lang).into() }).unwrap_err();
            assert!(matches!(error, Error::NoToolchain { .. }), "{error:?}");
            assert!(error.to_string().contains("make setup"), "{error}");
        }
    }

    /// Needs the tools `make setup` installs; fails without them.
    #[test]
    fn a_build_that_runs_too_long_is_stopped_with_everything_it_started() {
        let scratch = tempfile::tempdir().unwrap();
        let tools = Toolchains::new(Toolchains::default_dir())
            .with_timeout(Duration::from_secs(5))
            .with_scratch(scratch.path().to_owned());
        let text = "while (true) {}\nexport default { fetch() { return new Response(\"x\"); } };\n";
        let started = Instant::now();
        let error = tools.build(&Source { lang: Lang::Js, text: text.into() }).unwrap_err();
        assert!(matches!(error, Error::BuildStopped { .. }), "{error:?}");
        assert!(error.to_string().contains("over its 5 s time limit"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(30), "stopped at its limit");
        // Nothing of it runs on: soon no process is left in its build
        // directory (other builds on the machine, in theirs, are not this
        // test's). A process killed with its group may take a moment to be
        // torn down on a busy machine.
        let left = || {
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|entry| {
                    std::fs::read_link(entry.path().join("cwd")).ok().map(|cwd| (entry.path(), cwd))
                })
                .filter(|(_, cwd)| cwd.starts_with(scratch.path()))
                .collect::<Vec<_>>()
        };
        let killed = Instant::now();
        while !left().is_empty() && killed.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(left(), vec![], "processes left in the build directory");
    }

    /// Needs the tools `make setup` installs; fails without them. A
    /// JavaScript build takes the steps after Wizer from a template
    /// (`build.mjs`): here each build also takes the long way and fails
    /// unless both made the same bytes, for a handler with a snapshot of
    /// the template's size and for one whose snapshot needs more memory.
    #[test]
    fn a_templated_javascript_build_is_the_full_build() {
        let scratch = tempfile::tempdir().unwrap();
        let tools = Toolchains::new(Toolchains::default_dir()).with_scratch(scratch.path().to_owned());
        let starter = Source { lang: Lang::Js, text: starter(Lang::Js).into() };
        // Makes the template if it is not there yet.
        tools.build(&starter).unwrap();
        let checking = tools.checking_templates();
        let changed = Source { lang: Lang::Js, text: starter.text.replace("\"hello\"", "\"howdy\"") };
        assert_ne!(changed.text, starter.text);
        let larger = Source {
            lang: Lang::Js,
            text: "const names = Array.from({ length: 200000 }, (_, n) => `name ${n}`);\n\
                   export default { fetch() { return new Response(names.join()); } };\n"
                .into(),
        };
        for source in [changed, larger] {
            let component = checking.build(&source).unwrap();
            assert!(component.starts_with(b"\0asm"));
        }
    }

    #[test]
    fn a_javascript_syntax_error_keeps_its_line_and_drops_nodes_stack() {
        let said = "file:///x/componentize.js:302\n    throw new Error(err);\n          ^\n\nError: Failed to initialize component:\n\
                    Exception while evaluating top-level script\nhandler.js:3:30 SyntaxError: expected expression, got ')':\n\
                    handler.js:3:30     return new Response(\"x\" +);\n    at componentize (file:///x/componentize.js:302:11)\n\nNode.js v20.20.2\n";
        let explained = explain(Lang::Js, said);
        assert!(explained.contains("handler.js:3:30 SyntaxError: expected expression"), "{explained}");
        assert!(!explained.contains("    at "), "{explained}");
        assert!(!explained.contains("Node.js v20"), "{explained}");
    }

    #[test]
    fn a_python_traceback_keeps_the_handlers_frames_and_the_error() {
        // As componentize-py 0.25 prints it.
        let said = "Traceback (most recent call last):\n  File \"/x/bin/componentize-py\", line 8, in <module>\n    \
                    sys.exit(script())\n             ^^^^^^^^\nAssertionError: Traceback (most recent call last):\n  \
                    File \"/0/app.py\", line 6, in <module>\n    import handler\n  File \"/0/handler.py\", line 4\n    \
                    def handle(request)\n                       ^\nSyntaxError: expected ':'\n\n\nCaused by:\n    \
                    SyntaxError: expected ':' (handler.py, line 4)\n\nStack backtrace:\n   0: <anyhow::Error>::msg\n";
        let explained = explain(Lang::Py, said);
        assert_eq!(
            explained,
            "  File \"handler.py\", line 4\n    def handle(request)\n                       ^\nSyntaxError: expected ':'"
        );
        let said = "Traceback (most recent call last):\n  File \"/x/componentize-py\", line 8, in <module>\n    \
                    sys.exit(script())\nAssertionError: handler.py defines no handle(request) function\n\n\nCaused by:\n 0: x\n";
        assert_eq!(explain(Lang::Py, said), "handler.py defines no handle(request) function");
    }
}
