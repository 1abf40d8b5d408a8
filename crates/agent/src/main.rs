//! `hearth-agent`: the guest's `/init`, or the same server outside a VM.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use hearth_agent::main_process::{LogTarget, MainSpec};
use hearth_agent::server::{Connection, Ending, Server};
use hearth_agent::transport::{VsockListener, open_virtio_port};
use hearth_agent::{cmdline, config, init};

const USAGE: &str = "\
usage: hearth-agent                      as /init (PID 1) in a hearth microVM
       hearth-agent serve --unix PATH    serve on a Unix socket, one connection at a time
       hearth-agent serve --stdio        serve on stdin and stdout
       hearth-agent serve --vsock PORT   serve on a vsock port
       hearth-agent serve --port NAME    serve on a virtio-serial port
options of serve:
       --entrypoint BASE64               also run this command (as hearth.cmd=)
       --main BASE64                     also run this main process (as hearth.main=)
       --config-dir DIR                  keep the pushed config here [default: /run/hearth]
       --config-reload ACTION            after a config change: SIGNAME or a command (as hearth.config_reload=, not encoded)
       --config-hold MS                  hold the main process until the first config, at most MS ms (as hearth.config=1)
       --reload-timeout MS               kill a reload command after MS ms [default: 30000]";

/// What `serve` was asked to do.
struct ServeArgs {
    listen: Listen,
    /// `--entrypoint` or `--main`, decoded.
    main: Option<MainSpec>,
    /// `--config-*` and `--reload-timeout`.
    config: config::Options,
}

enum Listen {
    Unix(PathBuf),
    Stdio,
    Vsock(u32),
    Port(String),
}

fn main() -> ExitCode {
    if nix::unistd::getpid().as_raw() == 1 {
        init::run();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ServeArgs { listen, main, config } = match parse_args(&args) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            println!("hearth-agent {}\n{USAGE}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("hearth-agent: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let server = Server::with_config(config);
    if let Some(spec) = main {
        // Outside a VM there is no port: its output goes to our stderr.
        server.spawn_main(spec, || LogTarget::Console);
    }
    let result = match listen {
        Listen::Unix(path) => serve_unix(&server, &path),
        Listen::Stdio => serve_stdio(&server),
        Listen::Vsock(port) => serve_vsock(&server, port),
        Listen::Port(name) => serve_port(&server, &name),
    };
    server.kill_all();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearth-agent: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(None)` asks for the usage text.
fn parse_args(args: &[String]) -> Result<Option<ServeArgs>, String> {
    let mut args = args.iter().map(String::as_str);
    match args.next() {
        Some("serve") => {}
        None | Some("-h" | "--help" | "help" | "-V" | "--version") => return Ok(None),
        Some(other) => return Err(format!("unknown command {other:?}")),
    }
    let mut listen = None;
    let mut main = None;
    let mut config = config::Options::default();
    let millis = |flag: &str, value: &str| {
        value
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| format!("{flag} {value}: not a number of milliseconds"))
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let chosen = match flag {
            "--unix" => Listen::Unix(PathBuf::from(value()?)),
            "--stdio" => Listen::Stdio,
            "--vsock" => {
                let port = value()?;
                Listen::Vsock(port.parse().map_err(|_| format!("--vsock {port}: not a port number"))?)
            }
            "--port" => Listen::Port(value()?.to_owned()),
            "--entrypoint" => {
                let argv = cmdline::decode_cmd(value()?).map_err(|why| format!("--entrypoint {why}"))?;
                main = Some(MainSpec::command(argv));
                continue;
            }
            "--main" => {
                main = Some(cmdline::decode_main(value()?).map_err(|why| format!("--main {why}"))?);
                continue;
            }
            "--config-dir" => {
                config.dir = PathBuf::from(value()?);
                continue;
            }
            "--config-reload" => {
                config.reload =
                    Some(config::Reload::parse(value()?).map_err(|why| format!("--config-reload: {why}"))?);
                continue;
            }
            "--config-hold" => {
                config.hold = Some(millis(flag, value()?)?);
                continue;
            }
            "--reload-timeout" => {
                config.reload_timeout = millis(flag, value()?)?;
                continue;
            }
            other => return Err(format!("unknown option {other:?}")),
        };
        if listen.replace(chosen).is_some() {
            return Err("give one of --unix, --stdio, --vsock and --port".into());
        }
    }
    let listen = listen.ok_or("serve needs one of --unix, --stdio, --vsock and --port")?;
    config.owner = main.as_ref().and_then(|m| m.user.clone());
    Ok(Some(ServeArgs { listen, main, config }))
}

fn serve_unix(server: &Server, path: &Path) -> io::Result<()> {
    // A socket left behind by an earlier run; never remove anything else.
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    eprintln!("hearth-agent: listening on {}", path.display());
    for stream in listener.incoming() {
        let conn = match stream.and_then(Connection::unix) {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("hearth-agent: cannot accept a connection: {e}");
                continue;
            }
        };
        if let Ending::Shutdown { .. } = server.serve(conn) {
            break;
        }
    }
    let _ = fs::remove_file(path);
    Ok(())
}

fn serve_stdio(server: &Server) -> io::Result<()> {
    server.serve(Connection::stream(io::stdin(), io::stdout(), || {}));
    Ok(())
}

fn serve_vsock(server: &Server, port: u32) -> io::Result<()> {
    let listener = VsockListener::bind(port)?;
    eprintln!("hearth-agent: listening on vsock port {port}");
    loop {
        if let Ending::Shutdown { .. } = server.serve(listener.accept()?) {
            return Ok(());
        }
    }
}

fn serve_port(server: &Server, name: &str) -> io::Result<()> {
    let port = open_virtio_port(name)?;
    loop {
        if let Ending::Shutdown { .. } = server.serve(Connection::port(port.try_clone()?)?) {
            return Ok(());
        }
    }
}
