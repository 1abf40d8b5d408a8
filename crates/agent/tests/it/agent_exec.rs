//! Running programs through the agent: exit statuses, output, stdin, ttys,
//! concurrency.

use std::time::{Duration, Instant};

use crate::common::{Agent, WAIT, pattern};
use hearth_agent::client::{Error, ExecRequest, ExitStatus, Output};

fn exited(code: i32) -> ExitStatus {
    ExitStatus { code: Some(code), signal: None }
}

#[test]
fn exit_codes_and_signals_propagate() {
    let agent = Agent::start();
    let client = agent.client();

    assert_eq!(client.run(["true"]).unwrap().status, exited(0));
    assert_eq!(client.run(["sh", "-c", "exit 3"]).unwrap().status, exited(3));

    let sleeper = client.exec(ExecRequest::new(["sleep", "30"])).unwrap();
    sleeper.signal(9).unwrap();
    let out = sleeper.wait_timeout(WAIT).unwrap();
    assert_eq!(out.status, ExitStatus { code: None, signal: Some(9) });
}

#[test]
fn kill_ends_a_tty_session_with_its_shells_jobs() {
    let agent = Agent::start();
    let client = agent.client();
    // With job control the job gets a process group of its own, which
    // killing the shell's group would miss.
    let script = "set -m; sleep 600 & echo job=$!; wait";
    let mut shell = client.exec(ExecRequest::new(["bash", "-c", script]).tty(24, 80).stdin(true)).unwrap();
    let mut seen = String::new();
    let job = loop {
        if let Some(pid) = seen.split("job=").nth(1).and_then(|rest| rest.split_once('\r')) {
            break pid.0.trim().to_owned();
        }
        match shell.recv_timeout(WAIT).unwrap() {
            Some(Output::Stdout(data)) => seen.push_str(&String::from_utf8_lossy(&data)),
            other => panic!("expected the job's pid, got {other:?} after {seen:?}"),
        }
    };
    shell.kill().unwrap();
    let status = loop {
        match shell.recv_timeout(WAIT).unwrap() {
            Some(Output::Exited(status)) => break status,
            Some(_) => {}
            None => panic!("the session ended without an exit status"),
        }
    };
    assert_eq!(status, ExitStatus { code: None, signal: Some(9) });
    // Gone, or a zombie its new parent has yet to reap.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{job}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    };
    let started = Instant::now();
    while alive() {
        assert!(started.elapsed() < WAIT, "the job {job} outlived its killed session");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stdout_and_stderr_are_kept_apart() {
    let agent = Agent::start();
    let client = agent.client();
    let out = client.run(["sh", "-c", "echo out; echo err >&2; echo more"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\nmore\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
}

#[test]
fn stdin_round_trips_through_cat() {
    let agent = Agent::start();
    let client = agent.client();
    let data = pattern(300 * 1024);
    let cat = client.exec(ExecRequest::new(["cat"]).stdin(true)).unwrap();
    cat.write_stdin(&data).unwrap();
    cat.close_stdin().unwrap();
    let out = cat.wait_timeout(WAIT).unwrap();
    assert_eq!(out.status, exited(0));
    assert!(out.stdout == data, "cat echoed {} bytes of {}", out.stdout.len(), data.len());
}

#[test]
fn a_missing_program_is_an_error_and_never_starts() {
    let agent = Agent::start();
    let client = agent.client();
    match client.exec(ExecRequest::new(["hearth-no-such-program", "x"])) {
        Err(Error::Agent(message)) => {
            assert_eq!(message, r#"cannot run "hearth-no-such-program": No such file or directory"#)
        }
        other => panic!("expected the agent's error, got {other:?}"),
    }
    match client.exec(ExecRequest::new(["true"]).cwd("/hearth/no/such/dir")) {
        Err(Error::Agent(message)) => assert!(message.contains("working directory"), "{message}"),
        other => panic!("expected the agent's error, got {other:?}"),
    }
    // The connection is still good.
    assert_eq!(client.run(["true"]).unwrap().status, exited(0));
}

#[test]
fn env_and_cwd_are_applied_over_the_defaults() {
    let agent = Agent::start();
    let client = agent.client();
    let request = ExecRequest::new(["sh", "-c", r#"echo "$FOO|$HOME|$PATH|${TERM:-none}"; pwd"#])
        .env("FOO", "bar")
        .cwd("/tmp");
    let out = client.exec(request).unwrap().wait_timeout(WAIT).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "bar|/root|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|none\n/tmp\n"
    );
}

#[test]
fn a_tty_session_has_a_terminal_that_follows_resize() {
    let agent = Agent::start();
    let client = agent.client();
    let script = "tty; echo TERM=$TERM; stty size; echo err >&2; read line; stty size";
    let mut shell = client.exec(ExecRequest::new(["sh", "-c", script]).tty(24, 80).stdin(true)).unwrap();

    let mut seen = String::new();
    while !seen.contains("24 80") {
        match shell.recv_timeout(WAIT).unwrap() {
            Some(Output::Stdout(data)) => seen.push_str(&String::from_utf8_lossy(&data)),
            other => panic!("expected terminal output, got {other:?} after {seen:?}"),
        }
    }
    shell.resize(50, 132).unwrap();
    shell.write_stdin(b"go\n").unwrap();
    let rest = shell.wait_timeout(WAIT).unwrap();
    seen.push_str(&String::from_utf8_lossy(&rest.stdout));

    assert!(seen.contains("/dev/pts/"), "tty printed {seen:?}");
    assert!(seen.contains("TERM=xterm-256color"), "{seen:?}");
    assert!(seen.contains("err"), "stderr goes to the terminal too: {seen:?}");
    assert!(seen.contains("50 132"), "stty size after the resize: {seen:?}");
    assert!(rest.stderr.is_empty(), "a tty session has no separate stderr");
    assert_eq!(rest.status, exited(0));
}

#[test]
fn closing_a_tty_stdin_ends_input() {
    let agent = Agent::start();
    let client = agent.client();
    let cat = client.exec(ExecRequest::new(["cat"]).tty(24, 80).stdin(true)).unwrap();
    // A partial line: the first EOF character only ends it.
    cat.write_stdin(b"no newline").unwrap();
    cat.close_stdin().unwrap();
    let out = cat.wait_timeout(WAIT).unwrap();
    assert_eq!(out.status, exited(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no newline"));
}

#[test]
fn sessions_run_concurrently_and_keep_their_output_apart() {
    let agent = Agent::start();
    let client = agent.client();

    // One session waits on stdin while another runs to completion.
    let waiting = client.exec(ExecRequest::new(["cat"]).stdin(true)).unwrap();
    let other = client.run(["echo", "meanwhile"]).unwrap();
    assert_eq!(other.stdout, b"meanwhile\n");
    waiting.write_stdin(b"later\n").unwrap();
    waiting.close_stdin().unwrap();
    assert_eq!(waiting.wait_timeout(WAIT).unwrap().stdout, b"later\n");

    // Many sessions whose output interleaves on the wire.
    let script = r#"i=0; while [ $i -lt 300 ]; do echo "$ID:$i"; echo "$ID:e$i" >&2; i=$((i+1)); done"#;
    let handles: Vec<_> = (0..6)
        .map(|n| client.exec(ExecRequest::new(["sh", "-c", script]).env("ID", n.to_string())).unwrap())
        .collect();
    let collectors: Vec<_> =
        handles.into_iter().map(|h| std::thread::spawn(move || h.wait_timeout(WAIT).unwrap())).collect();
    for (n, collector) in collectors.into_iter().enumerate() {
        let out = collector.join().unwrap();
        let expect: String = (0..300).map(|i| format!("{n}:{i}\n")).collect();
        let expect_err: String = (0..300).map(|i| format!("{n}:e{i}\n")).collect();
        assert_eq!(String::from_utf8_lossy(&out.stdout), expect, "stdout of session {n}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expect_err, "stderr of session {n}");
    }
}

#[test]
fn exited_comes_after_all_output() {
    let agent = Agent::start();
    let client = agent.client();
    let mut zeros = client.exec(ExecRequest::new(["head", "-c", "2000000", "/dev/zero"])).unwrap();
    let mut received = 0;
    loop {
        match zeros.recv_timeout(WAIT).unwrap() {
            Some(Output::Stdout(data)) => received += data.len(),
            Some(Output::Exited(status)) => {
                assert_eq!(status, exited(0));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, 2_000_000, "all output arrives before Exited");
    assert_eq!(zeros.recv_timeout(WAIT).unwrap(), None, "nothing after Exited");
}

#[test]
fn a_background_child_holding_the_output_open_does_not_delay_exited() {
    let agent = Agent::start();
    let client = agent.client();
    let started = Instant::now();
    let out = client.run(["sh", "-c", "sleep 8 & echo started"]).unwrap();
    assert_eq!(out.stdout, b"started\n");
    assert_eq!(out.status, exited(0));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[test]
fn requests_a_session_cannot_take_are_errors_that_do_not_end_it() {
    let agent = Agent::start();
    let client = agent.client();
    let mut sleeper = client.exec(ExecRequest::new(["sleep", "1"])).unwrap();
    // Started without stdin and without a tty.
    sleeper.write_stdin(b"x").unwrap();
    sleeper.resize(1, 1).unwrap();
    let mut errors = Vec::new();
    while errors.len() < 2 {
        match sleeper.recv_timeout(WAIT).unwrap() {
            Some(Output::Error(message)) => errors.push(message),
            other => panic!("expected errors, got {other:?}"),
        }
    }
    let id = sleeper.id();
    assert_eq!(errors, [format!("session {id} has no open stdin"), format!("session {id} has no terminal")]);
    assert_eq!(sleeper.wait_timeout(WAIT).unwrap().status, exited(0));
}

#[test]
fn finished_sessions_leave_no_descriptors_behind() {
    let agent = Agent::start();
    let client = agent.client();
    let open_fds = || std::fs::read_dir(format!("/proc/{}/fd", agent.pid())).unwrap().count();
    client.run(["true"]).unwrap(); // the first session starts the agent's threads
    let before = open_fds();
    for tty in [None, Some((24, 80))] {
        for _ in 0..10 {
            let request =
                ExecRequest { tty, ..ExecRequest::new(["sh", "-c", "read x; echo $x"]).stdin(true) };
            let handle = client.exec(request).unwrap();
            handle.write_stdin(b"hi\n").unwrap();
            assert_eq!(handle.wait_timeout(WAIT).unwrap().status, exited(0));
        }
    }
    let started = Instant::now();
    while open_fds() != before {
        assert!(started.elapsed() < WAIT, "the agent had {before} descriptors open, now {}", open_fds());
        std::thread::sleep(Duration::from_millis(20));
    }
}
