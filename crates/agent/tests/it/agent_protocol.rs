//! The wire protocol: framing, resynchronisation, limits, and the
//! conversation-level requests (hello, ping, shutdown).

use std::io::{Cursor, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Agent, WAIT};
use hearth_agent::client::{AgentClient, Event, ExecRequest, MainState};
use hearth_agent::cmdline::{encode_cmd, encode_main};
use hearth_agent::main_process::{MainSpec, RestartPolicy};
use hearth_agent::protocol::{self, FrameReader, MAX_PAYLOAD, Request, Response, encode, write_frame};

fn frame(request: &Request) -> Vec<u8> {
    encode(request).unwrap()
}

/// Every frame in `bytes` that the reader can find, skipping bad ones.
fn frames_in(bytes: Vec<u8>) -> (Vec<Request>, u64) {
    let mut reader = FrameReader::new(Cursor::new(bytes));
    let mut found = Vec::new();
    loop {
        match reader.read::<Request>() {
            Ok(Some(request)) => found.push(request),
            Ok(None) => return (found, reader.skipped()),
            Err(protocol::Error::Decode(_) | protocol::Error::TooLarge { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

#[test]
fn the_frame_reader_resynchronises_after_garbage() {
    let ping = |nonce| frame(&Request::Ping { nonce });

    // Plain garbage, and a partial magic, before a frame.
    let (found, skipped) = frames_in([b"stale \x00\xff bytes HR".to_vec(), ping(1)].concat());
    assert_eq!((found, skipped), (vec![Request::Ping { nonce: 1 }], 17));

    // Garbage ending in "HRT" makes a false magic overlapping the real one.
    let (found, _) = frames_in([b"xxHRT".to_vec(), ping(2)].concat());
    assert_eq!(found, [Request::Ping { nonce: 2 }]);

    // A stale header whose length swallows the next frame, which then
    // fails to decode: the reader backs up and finds the real frame.
    let (found, _) = frames_in([b"HRTH\x02\x00".to_vec(), ping(3), b"tail".to_vec()].concat());
    assert_eq!(found, [Request::Ping { nonce: 3 }]);

    // A frame cut short by the end of the stream is dropped.
    let cut = ping(4);
    let (found, _) = frames_in([ping(5), cut[..cut.len() - 1].to_vec()].concat());
    assert_eq!(found, [Request::Ping { nonce: 5 }]);
}

#[test]
fn oversize_frames_are_rejected_both_ways() {
    let mut bytes = b"HRTH".to_vec();
    bytes.extend(((MAX_PAYLOAD + 1) as u32).to_le_bytes());
    bytes.extend(frame(&Request::Ping { nonce: 3 }));
    let mut reader = FrameReader::new(Cursor::new(bytes));
    match reader.read::<Request>() {
        Err(protocol::Error::TooLarge { len }) => assert_eq!(len, MAX_PAYLOAD + 1),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(reader.read::<Request>().unwrap(), Some(Request::Ping { nonce: 3 }));

    let huge = Response::Stdout { id: 1, data: vec![0; MAX_PAYLOAD] };
    assert!(matches!(write_frame(&mut Vec::new(), &huge), Err(protocol::Error::TooLarge { .. })));
}

#[test]
fn every_message_round_trips() {
    let requests = [
        Request::Hello { version: 1, nonce: u64::MAX },
        Request::Exec {
            id: 7,
            argv: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec![("A".into(), "b".into())],
            cwd: Some("/tmp".into()),
            tty: Some((24, 80)),
            stdin: true,
        },
        Request::Stdin { id: 7, data: vec![1, 2, 3] },
        Request::CloseStdin { id: 7 },
        Request::Signal { id: 7, signal: 15 },
        Request::Resize { id: 7, rows: 1, cols: 2 },
        Request::Kill { id: 7 },
        Request::PutFile { id: 8, path: "/x".into(), mode: 0o644 },
        Request::FileChunk { id: 8, data: vec![0; 10] },
        Request::FileEnd { id: 8 },
        Request::GetFile { id: 9, path: "/y".into() },
        Request::Ping { nonce: 0 },
        Request::Shutdown { reboot: true },
    ];
    let responses = [
        Response::HelloAck { version: 1, nonce: 2, hostname: "h".into(), kernel: "6.1".into() },
        Response::Started { id: 1, pid: 42 },
        Response::Stdout { id: 1, data: b"out".to_vec() },
        Response::Stderr { id: 1, data: b"err".to_vec() },
        Response::Exited { id: 1, code: None, signal: Some(9) },
        Response::FileChunk { id: 2, data: vec![7] },
        Response::FileEnd { id: 2, mode: 0o755, size: 1 },
        Response::Done { id: 3 },
        Response::Error { id: None, message: "no".into() },
        Response::Pong { nonce: 5 },
        Response::Main(hearth_agent::protocol::MainStatus::default()),
    ];
    let mut bytes = Vec::new();
    requests.iter().for_each(|r| write_frame(&mut bytes, r).unwrap());
    responses.iter().for_each(|r| write_frame(&mut bytes, r).unwrap());
    let mut reader = FrameReader::new(Cursor::new(bytes));
    for request in &requests {
        assert_eq!(&reader.read::<Request>().unwrap().unwrap(), request);
    }
    for response in &responses {
        assert_eq!(&reader.read::<Response>().unwrap().unwrap(), response);
    }
    assert_eq!(reader.skipped(), 0);
}

#[test]
fn the_server_skips_garbage_and_reports_bad_frames() {
    let agent = Agent::start();
    let mut raw = agent.raw();
    raw.stream.write_all(b"junk from an earlier host \xff\x00HR").unwrap();
    raw.send(&Request::Ping { nonce: 1 });
    assert_eq!(raw.recv(), Response::Pong { nonce: 1 });

    // An oversize header: reported, then the next frame is served.
    raw.stream.write_all(b"HRTH").unwrap();
    raw.stream.write_all(&(4u32 << 20).to_le_bytes()).unwrap();
    raw.send(&Request::Ping { nonce: 2 });
    match raw.recv() {
        Response::Error { id: None, message } => assert!(message.contains("exceeds the limit"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(raw.recv(), Response::Pong { nonce: 2 });

    // A frame that is not a request.
    raw.stream.write_all(b"HRTH\x01\x00\x00\x00\xee").unwrap();
    raw.send(&Request::Ping { nonce: 3 });
    assert!(matches!(raw.recv(), Response::Error { id: None, .. }));
    assert_eq!(raw.recv(), Response::Pong { nonce: 3 });
}

#[test]
fn hello_describes_the_machine_and_ends_every_session() {
    let agent = Agent::start();
    let mut raw = agent.raw();
    match raw.hello(11) {
        Response::HelloAck { version, hostname, kernel, .. } => {
            assert_eq!(version, protocol::VERSION);
            assert_eq!(hostname, nix::unistd::gethostname().unwrap().to_string_lossy());
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
            assert_eq!(kernel, release.trim());
        }
        other => panic!("expected HelloAck, got {other:?}"),
    }

    let exec = |id, argv: &[&str]| Request::Exec {
        id,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        cwd: None,
        tty: None,
        stdin: false,
    };
    raw.send(&exec(1, &["sleep", "30"]));
    let Response::Started { id: 1, pid } = raw.recv() else { panic!("expected Started") };
    raw.hello(12);
    let proc_dir = format!("/proc/{pid}");
    let started = Instant::now();
    while std::path::Path::new(&proc_dir).exists() {
        assert!(started.elapsed() < WAIT, "the old session's process {pid} still runs after hello");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The id is free again, and nothing of the old session comes through.
    raw.send(&exec(1, &["echo", "hi"]));
    raw.send(&Request::Ping { nonce: 13 });
    let mut seen = Vec::new();
    loop {
        match raw.recv() {
            Response::Pong { nonce: 13 } => {}
            response @ Response::Exited { .. } => {
                seen.push(response);
                break;
            }
            response => seen.push(response),
        }
    }
    let Response::Started { id: 1, .. } = seen[0] else { panic!("expected Started, got {seen:?}") };
    assert_eq!(
        seen[1..],
        [
            Response::Stdout { id: 1, data: b"hi\n".to_vec() },
            Response::Exited { id: 1, code: Some(0), signal: None }
        ]
    );
}

#[test]
fn a_client_hello_ends_the_handles_of_its_sessions() {
    let agent = Agent::start();
    let client = agent.client();
    let mut sleeper = client.exec(ExecRequest::new(["sleep", "30"])).unwrap();
    client.hello().unwrap();
    assert_eq!(sleeper.recv_timeout(WAIT).unwrap(), None);
    assert!(client.ping().unwrap() < WAIT);
}

#[test]
fn a_new_connection_can_take_over() {
    let agent = Agent::start();
    let first = agent.client();
    drop(first);
    let second = agent.client();
    assert!(second.run(["true"]).unwrap().status.success());
}

#[test]
fn shutdown_ends_the_server_outside_a_vm() {
    let mut agent = Agent::start();
    let client = agent.client();
    client.shutdown(false).unwrap();
    let status = agent.wait_exit(WAIT).expect("the agent exits after Shutdown");
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_entrypoints_end_is_reported() {
    let cmd = encode_cmd(&["sh", "-c", "exit 7"]);
    let agent = Agent::start_with(&["--entrypoint", &cmd]);
    let client = AgentClient::from_unix(agent.connect()).unwrap().with_timeout(WAIT);
    let events = client.take_events().unwrap();
    // Reported when it happens (possibly before this connection) and again
    // after hello: the latest state, whatever came before.
    client.hello().unwrap();
    let status = loop {
        match events.recv_timeout(WAIT).unwrap() {
            Event::Main(status) if status.state == MainState::Running => continue,
            Event::Main(status) => break status,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!((status.state, status.code, status.restarts), (MainState::Exited, Some(7), 0), "{status:?}");
}

#[test]
fn a_failing_main_process_is_restarted_with_its_environment_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let workdir = dir.path().join("made");
    let spec = MainSpec {
        argv: vec!["sh".into(), "-c".into(), "echo \"$FOO $(pwd)\" >> ../seen; exit 3".into()],
        env: vec!["FOO=bar".into()],
        workdir: Some(workdir.display().to_string()),
        user: None,
        restart: RestartPolicy::OnFailure,
    };
    let agent = Agent::start_with(&["--main", &encode_main(&spec)]);
    let client = AgentClient::from_unix(agent.connect()).unwrap().with_timeout(WAIT);
    let events = client.take_events().unwrap();
    client.hello().unwrap();
    // 100 + 200 ms of backoff: the third run starts within a second.
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        match events.recv_timeout(WAIT) {
            Ok(Event::Main(status)) if status.restarts >= 2 => {
                last = Some(status);
                break;
            }
            Ok(Event::Main(status)) => last = Some(status),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    let last = last.expect("no status came");
    assert!(last.restarts >= 2, "{last:?}");
    let seen = std::fs::read_to_string(dir.path().join("seen")).unwrap();
    let first = seen.lines().next().unwrap_or_default();
    assert_eq!(first, format!("bar {}", workdir.display()), "{seen}");
    // A later status reports the last exit's code.
    let exited = loop {
        match events.recv_timeout(WAIT).unwrap() {
            Event::Main(status) if status.state == MainState::Restarting => break status,
            _ => continue,
        }
    };
    assert_eq!(exited.code, Some(3), "{exited:?}");
}

#[test]
fn serve_stdio_speaks_the_protocol() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth-agent"))
        .args(["serve", "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let client =
        AgentClient::new(child.stdout.take().unwrap(), child.stdin.take().unwrap()).with_timeout(WAIT);
    client.hello().unwrap();
    let out = client.run(["echo", "over stdio"]).unwrap();
    assert_eq!(out.stdout, b"over stdio\n");
    drop(client); // closes the agent's stdin: it ends
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > WAIT {
            let _ = child.kill();
            panic!("serve --stdio did not end at end of input");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_host_that_vanishes_with_output_pending_does_not_wedge_the_agent() {
    let agent = Agent::start();
    let mut raw = agent.raw();
    raw.send(&Request::Exec {
        id: 1,
        argv: vec!["head".into(), "-c".into(), "100000000".into(), "/dev/zero".into()],
        env: vec![],
        cwd: None,
        tty: None,
        stdin: false,
    });
    // Requests that each want an answer, none of which is read: the
    // outbox fills, and the agent's reader waits to queue a Pong.
    for nonce in 0..500 {
        raw.send(&Request::Ping { nonce });
    }
    // Time for the outbox to fill, which nothing outside the agent shows.
    // Were it not full yet, the host would vanish with less pending, and
    // the checks below would still have to hold.
    std::thread::sleep(Duration::from_millis(300));
    drop(raw);

    let client = AgentClient::from_unix(agent.connect()).unwrap().with_timeout(WAIT);
    client.hello().expect("the next host is served");
    assert_eq!(client.run(["echo", "ok"]).unwrap().stdout, b"ok\n");
}
