//! The agent's configuration, from the kernel command line.
//!
//! | parameter | meaning |
//! |---|---|
//! | `hearth.root=/dev/vda` | mount this ext4 device and switch root into it |
//! | `hearth.hostname=NAME` | the machine's hostname |
//! | `hearth.port=NAME` | the virtio-serial port to serve on (default `hearth.agent`) |
//! | `hearth.vsock=PORT` | serve on this vsock port instead (Firecracker) |
//! | `hearth.cmd=BASE64` | base64 of a JSON array: the entrypoint to start after boot |
//!
//! Parameters with a dot are not passed to init by the kernel, so the agent
//! reads `/proc/cmdline` itself. A malformed parameter is reported (as a
//! [`BootConfig::problems`] line on the console) and otherwise ignored: a
//! machine with a typo still boots and can be reached.

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};

/// The virtio-serial port name when `hearth.port` is absent.
pub const DEFAULT_PORT: &str = "hearth.agent";

/// What the command line asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub root: Option<String>,
    pub hostname: Option<String>,
    pub port: String,
    pub vsock: Option<u32>,
    pub cmd: Option<Vec<String>>,
    /// Parameters that were ignored, and why; one sentence each.
    pub problems: Vec<String>,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            root: None,
            hostname: None,
            port: DEFAULT_PORT.into(),
            vsock: None,
            cmd: None,
            problems: Vec::new(),
        }
    }
}

/// Parses a kernel command line (the contents of `/proc/cmdline`).
pub fn parse(cmdline: &str) -> BootConfig {
    let mut config = BootConfig::default();
    for word in split(cmdline) {
        if word == "--" {
            break; // the rest is for init's argv
        }
        let Some(key) = word.strip_prefix("hearth.") else { continue };
        let (key, value) = match key.split_once('=') {
            Some((key, value)) => (key, value),
            None => (key, ""),
        };
        if value.is_empty() {
            config.problems.push(format!("hearth.{key} has no value; it was ignored"));
            continue;
        }
        match key {
            "root" if value.starts_with('/') => config.root = Some(value.into()),
            "root" => {
                config.problems.push(format!("hearth.root={value} is not a device path; it was ignored"))
            }
            "hostname" if value.len() <= 64 => config.hostname = Some(value.into()),
            "hostname" => {
                config.problems.push("hearth.hostname is longer than 64 bytes; it was ignored".into())
            }
            "port" => config.port = value.into(),
            "vsock" => match value.parse() {
                Ok(port) => config.vsock = Some(port),
                Err(_) => {
                    config.problems.push(format!("hearth.vsock={value} is not a port number; it was ignored"))
                }
            },
            "cmd" => match decode_cmd(value) {
                Ok(argv) => config.cmd = Some(argv),
                Err(why) => config.problems.push(format!("hearth.cmd {why}; it was ignored")),
            },
            _ => config.problems.push(format!("hearth.{key} is not a known parameter; it was ignored")),
        }
    }
    config
}

/// Encodes an entrypoint for `hearth.cmd=`: base64 of a JSON array of strings.
pub fn encode_cmd<S: AsRef<str>>(argv: &[S]) -> String {
    let argv: Vec<&str> = argv.iter().map(AsRef::as_ref).collect();
    general_purpose::STANDARD.encode(serde_json::to_string(&argv).unwrap_or_default())
}

/// Decodes an entrypoint encoded by [`encode_cmd`]; the error completes a
/// sentence whose subject is the parameter ("is not base64").
pub fn decode_cmd(value: &str) -> Result<Vec<String>, String> {
    const LENIENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const ENGINES: [GeneralPurpose; 2] = [
        GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT),
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT),
    ];
    let json = ENGINES
        .iter()
        .find_map(|engine| engine.decode(value).ok())
        .ok_or_else(|| "is not base64".to_string())?;
    let argv: Vec<String> =
        serde_json::from_slice(&json).map_err(|e| format!("is not a JSON array of strings ({e})"))?;
    if argv.is_empty() {
        return Err("is an empty command".into());
    }
    Ok(argv)
}

/// Splits like the kernel does: on whitespace outside double quotes, which
/// are removed.
fn split(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders what differs from the default, one `key=value` per item.
    fn render(config: &BootConfig) -> String {
        let mut parts = Vec::new();
        if let Some(root) = &config.root {
            parts.push(format!("root={root}"));
        }
        if let Some(hostname) = &config.hostname {
            parts.push(format!("hostname={hostname}"));
        }
        if config.port != DEFAULT_PORT {
            parts.push(format!("port={}", config.port));
        }
        if let Some(vsock) = config.vsock {
            parts.push(format!("vsock={vsock}"));
        }
        if let Some(cmd) = &config.cmd {
            parts.push(format!("cmd={cmd:?}"));
        }
        parts.extend(config.problems.iter().map(|p| format!("problem: {p}")));
        parts.join(" | ")
    }

    fn check(cmdline: &str, expect: &str) {
        assert_eq!(render(&parse(cmdline)), expect, "parsing {cmdline:?}");
    }

    #[test]
    fn parses_the_hearth_parameters() {
        check("", "");
        check("console=ttyS0 quiet panic=-1", "");
        check("console=ttyS0 hearth.root=/dev/vda hearth.hostname=web-1", "root=/dev/vda | hostname=web-1");
        check("hearth.port=agent0", "port=agent0");
        check("hearth.vsock=1024", "vsock=1024");
        check("  hearth.hostname=a\thearth.hostname=b\n", "hostname=b");
        check("hearth.root=/dev/vda -- hearth.hostname=for-init", "root=/dev/vda");
        check("hearth.hostname=\"quoted\" other", "hostname=quoted");
    }

    #[test]
    fn decodes_the_entrypoint() {
        let cmd = encode_cmd(&["sh", "-c", "echo \"hi there\" && sleep 1"]);
        check(&format!("hearth.cmd={cmd}"), r#"cmd=["sh", "-c", "echo \"hi there\" && sleep 1"]"#);
        // Unpadded, and the URL-safe alphabet, are accepted too.
        check("hearth.cmd=WyJ0cnVlIl0", r#"cmd=["true"]"#);
        check(
            &format!("hearth.cmd={}", encode_cmd(&["ä?>"]).replace('+', "-").replace('/', "_")),
            r#"cmd=["ä?>"]"#,
        );
    }

    #[test]
    fn reports_bad_parameters_and_keeps_going() {
        check("hearth.root", "problem: hearth.root has no value; it was ignored");
        check(
            "hearth.root=vda hearth.hostname=x",
            "hostname=x | problem: hearth.root=vda is not a device path; it was ignored",
        );
        check("hearth.vsock=abc", "problem: hearth.vsock=abc is not a port number; it was ignored");
        check("hearth.cmd=!!!", "problem: hearth.cmd is not base64; it was ignored");
        check(
            &format!("hearth.cmd={}", general_purpose::STANDARD.encode("{\"a\":1}")),
            "problem: hearth.cmd is not a JSON array of strings (invalid type: map, expected a sequence at line 1 column 0); it was ignored",
        );
        check("hearth.cmd=W10=", "problem: hearth.cmd is an empty command; it was ignored");
        check("hearth.colour=blue", "problem: hearth.colour is not a known parameter; it was ignored");
        check(
            &format!("hearth.hostname={}", "h".repeat(65)),
            "problem: hearth.hostname is longer than 64 bytes; it was ignored",
        );
    }
}
