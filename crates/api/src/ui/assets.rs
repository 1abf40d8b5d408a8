//! The dashboard's files, embedded at compile time by `build.rs` from
//! `ui/dist`, with gzip copies made there.

/// One file of the built dashboard.
#[derive(Debug)]
pub(crate) struct Asset {
    /// Its path under `ui/dist`, e.g. `assets/index-1a2b3c.js`.
    pub(crate) path: &'static str,
    pub(crate) body: &'static [u8],
    /// The same bytes gzipped, when that is smaller.
    pub(crate) gzip: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// Whether the dashboard was built into this binary.
pub(crate) fn built() -> bool {
    find("index.html").is_some()
}

/// The file at `path` (relative to `/ui/`), if there is one.
pub(crate) fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// The `Content-Type` of a file, by its extension.
pub(crate) fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Files under `assets/` carry a content hash in their names (vite's
/// build), so a name never holds other bytes: cached for good.
pub(crate) fn immutable(path: &str) -> bool {
    path.starts_with("assets/")
}

/// Whether an `Accept-Encoding` header takes gzip (and does not refuse it
/// with `q=0`).
pub(crate) fn accepts_gzip(header: Option<&str>) -> bool {
    header.is_some_and(|value| {
        value.split(',').any(|part| {
            let mut fields = part.split(';').map(str::trim);
            let coding = fields.next().unwrap_or("");
            let refused = fields
                .any(|f| f.strip_prefix("q=").is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q == 0.0)));
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("assets/index-abc.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("assets/index-abc.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("LICENSE"), "application/octet-stream");
    }

    #[test]
    fn only_hashed_assets_are_immutable() {
        assert!(immutable("assets/index-abc.js"));
        assert!(!immutable("index.html"));
    }

    #[test]
    fn gzip_is_sent_only_when_accepted() {
        assert!(accepts_gzip(Some("gzip, deflate, br, zstd")));
        assert!(accepts_gzip(Some("br;q=1.0, GZIP;q=0.5")));
        assert!(accepts_gzip(Some("*")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("br, deflate")));
        assert!(!accepts_gzip(None));
    }

    #[test]
    fn every_embedded_file_has_a_path_and_its_gzip_copy_is_smaller() {
        for asset in ASSETS {
            assert!(!asset.path.is_empty() && !asset.path.starts_with('/'));
            if let Some(gzip) = asset.gzip {
                assert!(gzip.len() < asset.body.len(), "{}", asset.path);
            }
        }
    }
}
