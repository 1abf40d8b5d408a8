//! Which webhook guards a request: the longest whose path covers the
//! request's path as sent or as a router may read it, so that no spelling
//! of a guarded path slips past its check.

/// A webhook's check, as an ingress applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// Without a trailing slash ("" for the root).
    pub path: String,
    pub secret: Option<String>,
}

impl Guard {
    /// Whether a request for `path` falls under this guard.
    pub fn covers(&self, path: &str) -> bool {
        under(&self.path, path)
    }
}

/// Orders guards for [`guard_for`]: longest path first; of two on one path
/// (two daemons racing), the signed.
pub fn sort(guards: &mut [Guard]) {
    guards.sort_by_key(|g| (std::cmp::Reverse(g.path.len()), g.secret.is_none()));
}

/// Whether `path` is `prefix` or below it ("" is the root, above all).
fn under(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || (path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// The guard a request for `path` meets: the longest that covers the path
/// as sent or as the app's router may read it (percent-escapes decoded, dot
/// segments and repeated slashes resolved, in any case), so that no
/// spelling of a guarded path slips past its check. `guards` is ordered by
/// [`sort`].
pub fn guard_for<'g>(guards: &'g [Guard], path: &str) -> Verdict<'g> {
    if guards.is_empty() {
        return Verdict::Open;
    }
    // Each spelling meets its own longest guard (in any case). Two
    // spellings under two different guards are refused: the request could
    // pass one check and be routed as the other.
    let mut met: Option<&Guard> = None;
    for form in path_forms(path) {
        let lower = form.to_ascii_lowercase();
        let Some(guard) =
            guards.iter().find(|g| g.covers(&form) || under(&g.path.to_ascii_lowercase(), &lower))
        else {
            continue;
        };
        match met {
            Some(seen) if !std::ptr::eq(seen, guard) => return Verdict::Ambiguous,
            _ => met = Some(guard),
        }
    }
    match met {
        Some(guard) => Verdict::Guarded(guard),
        None => Verdict::Open,
    }
}

/// What an ingress does with a request, by the webhooks of its target.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'g> {
    /// No webhook covers it.
    Open,
    /// This webhook's checks apply.
    Guarded(&'g Guard),
    /// Spellings of its path fall under different webhooks: refused.
    Ambiguous,
}

/// `path` as sent and normalised: percent-decoded (repeatedly, for
/// double escapes), `.` and `..` resolved, empty segments dropped.
fn path_forms(path: &str) -> Vec<String> {
    let mut forms = vec![path.to_owned()];
    let mut decoded = path.to_owned();
    for _ in 0..3 {
        let next = crate::percent::decode_path(&decoded);
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let normal = format!("/{}", segments.join("/"));
    if normal != path {
        forms.push(normal);
    }
    forms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_cover_their_path_and_below() {
        let g = Guard { path: "/hooks/github".into(), secret: None };
        assert!(g.covers("/hooks/github"));
        assert!(g.covers("/hooks/github/push"));
        assert!(!g.covers("/hooks/githubx"));
        assert!(!g.covers("/"));
        assert!(Guard { path: String::new(), secret: None }.covers("/anything"));
    }

    #[test]
    fn the_longest_guard_wins_under_any_spelling() {
        let guard =
            |path: &str, secret: Option<&str>| Guard { path: path.into(), secret: secret.map(Into::into) };
        let mut list = vec![guard("/hooks", None), guard("/hooks/github", Some("s")), guard("", None)];
        sort(&mut list);
        let pick = |path: &str| match guard_for(&list, path) {
            Verdict::Guarded(g) => Some(g.path.as_str()),
            Verdict::Open => None,
            Verdict::Ambiguous => Some("ambiguous"),
        };
        assert_eq!(pick("/hooks/github/push"), Some("/hooks/github"));
        assert_eq!(pick("/hooks/gitlab"), Some("/hooks"));
        assert_eq!(pick("/other"), Some(""));
        for spelling in
            ["/hooks//github", "/a/../hooks/github", "/hooks/%67ithub", "/Hooks/GITHUB", "/hooks\\github"]
        {
            // Checked as the signed one, or refused for being two at once.
            let met = pick(spelling);
            assert!(matches!(met, Some("/hooks/github" | "ambiguous")), "{spelling}: {met:?}");
        }
        assert_eq!(path_forms("/a/./b/../c%2Fd"), ["/a/./b/../c%2Fd", "/a/c/d"]);
        assert_eq!(path_forms("/plain"), ["/plain"]);
        assert_eq!(guard_for(&[], "/x"), Verdict::Open);
        // A spelling that one check would pass and another route refuses.
        assert_eq!(pick("/hooks/github/../gitlab"), Some("ambiguous"));
        // Of two on one path, the signed one.
        let mut tie = vec![guard("/a", None), guard("/a", Some("s"))];
        sort(&mut tie);
        assert_eq!(guard_for(&tie, "/a"), Verdict::Guarded(&tie[0]));
    }
}
