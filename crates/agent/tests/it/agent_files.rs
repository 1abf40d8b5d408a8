//! Copying files to and from the agent.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::common::{Agent, pattern};
use hearth_agent::client::{Error, FileInfo};

#[test]
fn a_3_mib_file_round_trips_with_its_mode() {
    let agent = Agent::start();
    let client = agent.client();
    let data = pattern(3 << 20);
    let dir = agent.dir().join("a/b/c");
    let path = dir.join("file.bin");
    let path_str = path.to_str().unwrap();

    let size = client.put_file(path_str, 0o751, &data[..]).unwrap();
    assert_eq!(size, data.len() as u64);
    assert!(fs::read(&path).unwrap() == data, "the uploaded content differs");
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o751);
    let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["file.bin"], "no temporary file is left behind");

    let mut downloaded = Vec::new();
    let info = client.get_file(path_str, &mut downloaded).unwrap();
    assert_eq!(info, FileInfo { mode: 0o751, size: data.len() as u64 });
    assert!(downloaded == data, "the downloaded content differs");
}

#[test]
fn an_upload_replaces_the_file_whole() {
    let agent = Agent::start();
    let client = agent.client();
    let path = agent.dir().join("config");
    fs::write(&path, "old contents that are longer than the new ones").unwrap();
    client.put_file(path.to_str().unwrap(), 0o600, &b"new"[..]).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"new");
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
}

#[test]
fn an_empty_file_round_trips() {
    let agent = Agent::start();
    let client = agent.client();
    let path = agent.dir().join("empty");
    assert_eq!(client.put_file(path.to_str().unwrap(), 0o644, &b""[..]).unwrap(), 0);
    let mut out = Vec::new();
    assert_eq!(client.get_file(path.to_str().unwrap(), &mut out).unwrap(), FileInfo { mode: 0o644, size: 0 });
}

#[test]
fn transfers_that_cannot_work_are_errors() {
    let agent = Agent::start();
    let client = agent.client();
    let missing = agent.dir().join("missing");
    let blocker = agent.dir().join("plain-file");
    fs::write(&blocker, "x").unwrap();

    let cases: [(&str, Result<(), Error>); 5] = [
        ("get missing", client.get_file(missing.to_str().unwrap(), Vec::new()).map(drop)),
        ("get dir", client.get_file(agent.dir().to_str().unwrap(), Vec::new()).map(drop)),
        ("get relative", client.get_file("etc/hostname", Vec::new()).map(drop)),
        ("put under file", client.put_file(blocker.join("x").to_str().unwrap(), 0o644, &b"x"[..]).map(drop)),
        ("put relative", client.put_file("x", 0o644, &b"x"[..]).map(drop)),
    ];
    let messages: Vec<String> = cases
        .into_iter()
        .map(|(what, result)| match result {
            Err(Error::Agent(message)) => message,
            other => panic!("{what}: expected the agent's error, got {other:?}"),
        })
        .collect();
    let dir = agent.dir().display().to_string();
    assert_eq!(
        messages,
        [
            format!("cannot read \"{dir}/missing\": No such file or directory"),
            format!("cannot read \"{dir}\": it is not a regular file"),
            "\"etc/hostname\" is not an absolute path".to_string(),
            format!(
                "cannot create the directory \"{dir}/plain-file\": a file that is not a directory is in the way"
            ),
            "\"x\" is not an absolute path".to_string(),
        ]
    );
    // The connection is still good.
    assert!(client.run(["true"]).unwrap().status.success());
}
