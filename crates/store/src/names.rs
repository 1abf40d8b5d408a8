//! The one rule for names that become store key segments, host names and
//! directory names (machines, networks, apps, labs): a DNS label.

/// Checks that `name` is 1 to `max_len` lowercase letters, digits and
/// dashes, not starting or ending with a dash. `kind` ("machine",
/// "network", …) goes into the message.
pub fn check_label(kind: &str, name: &str, max_len: usize) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= max_len
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} name {name:?} is not valid: use 1 to {max_len} lowercase letters, digits and dashes, not starting or ending with a dash"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::check_label;

    #[test]
    fn labels_are_lowercase_words_joined_by_dashes() {
        for good in ["n1", "raft-node-3", "a", &"x".repeat(63)] {
            assert!(check_label("machine", good, 63).is_ok(), "{good}");
        }
        for bad in ["", "N1", "-a", "a-", "a_b", "a.b", "a/b", &"x".repeat(64)] {
            let error = check_label("machine", bad, 63).expect_err(bad);
            assert!(error.starts_with("machine name") && error.contains("1 to 63"), "{error}");
        }
    }
}
