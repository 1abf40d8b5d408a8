//! JSON Schemas per key prefix: a change whose merged value under a
//! prefix does not validate is refused before it is written, so no
//! subscriber ever sees it. A prefix with nothing set under it is not
//! checked (so `required` speaks of the keys of a table that is set).

use serde_json::Value;

use crate::Error;

/// A schema, compiled.
pub struct Schema {
    prefix: String,
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Schema {
    /// Compiles `schema` for the keys under `prefix` (empty: the whole
    /// tree). References to other documents are not followed.
    pub fn compile(prefix: &str, schema: &Value) -> Result<Self, Error> {
        let bad = |reason: String| Error::InvalidSchema { prefix: prefix.to_owned(), reason };
        if !schema.is_object() && !schema.is_boolean() {
            return Err(bad("a JSON Schema is an object (or true or false)".into()));
        }
        let mut compiler = boon::Compiler::new();
        // No `$ref` to anything but the schema itself (and the standard
        // metaschemas, built in): the default loader reads `file://` URLs,
        // which would let a schema read the daemon's files.
        compiler.use_loader(Box::new(NoLoader));
        let location = "hearth:config-schema";
        compiler.add_resource(location, schema.clone()).map_err(|e| bad(hearth_store::chain(&e)))?;
        let mut schemas = boon::Schemas::new();
        let index = compiler.compile(location, &mut schemas).map_err(|e| bad(hearth_store::chain(&e)))?;
        Ok(Self { prefix: prefix.to_owned(), schemas, index })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Checks the merged value under the prefix. `view` names what was checked (`global`,
    /// `app:shop`) for the message. A problem at or around one of the
    /// `secrets` (dotted keys) names only the keyword that failed: the
    /// validator's own words may quote the value.
    pub fn check(&self, value: &Value, view: &str, secrets: &[String]) -> Result<(), Error> {
        self.schemas.validate(value, self.index).map_err(|error| {
            let mut problems = Vec::new();
            leaves(&error, &self.prefix, secrets, &mut problems);
            problems.dedup();
            Error::SchemaViolation { prefix: self.prefix.clone(), view: view.to_owned(), problems }
        })
    }
}

/// The innermost errors, each as `key: what is wrong`.
fn leaves(error: &boon::ValidationError<'_, '_>, prefix: &str, secrets: &[String], out: &mut Vec<String>) {
    if error.causes.is_empty() {
        let pointer = error.instance_location.to_string();
        let mut key = prefix.to_owned();
        for token in pointer.split('/').filter(|t| !t.is_empty()) {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(&token.replace("~1", "/").replace("~0", "~"));
        }
        let near_secret = secrets.iter().any(|s| crate::key::covers(&key, s) || crate::key::covers(s, &key));
        let at = if key.is_empty() { "(the root)".to_owned() } else { key };
        if near_secret {
            let keyword =
                error.kind.keyword_path().map_or_else(|| "the schema".to_owned(), |k| k.to_string());
            out.push(format!("{at}: does not match `{keyword}` (a secret: its value is not shown)"));
        } else {
            out.push(format!("{at}: {}", error.kind));
        }
    } else {
        for cause in &error.causes {
            leaves(cause, prefix, secrets, out);
        }
    }
}

/// Refuses every document a schema refers to.
struct NoLoader;

impl boon::UrlLoader for NoLoader {
    fn load(&self, url: &str) -> Result<Value, Box<dyn std::error::Error>> {
        Err(format!("{url}: a config schema may refer only to itself").into())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn db_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "host": {"type": "string"}
            },
            "required": ["host"]
        })
    }

    #[test]
    fn a_valid_value_passes() {
        let schema = Schema::compile("db", &db_schema()).unwrap();
        schema.check(&json!({"host": "h", "port": 5432}), "global", &[]).unwrap();
    }

    #[test]
    fn a_violation_names_the_key_and_the_reason() {
        let schema = Schema::compile("db", &db_schema()).unwrap();
        let error = schema.check(&json!({"host": "h", "port": 70000}), "app:shop", &[]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("db.port") && text.contains("70000") && text.contains("app:shop"), "{text}");
        let text = schema.check(&json!({"port": 1}), "global", &[]).unwrap_err().to_string();
        assert!(text.contains("host"), "{text}");
    }

    #[test]
    fn a_violation_near_a_secret_names_the_keyword_and_never_the_value() {
        let schema =
            json!({"properties": {"password": {"pattern": "^x", "maxLength": 3}, "port": {"maximum": 1}}});
        let schema = Schema::compile("db", &schema).unwrap();
        let value = json!({"password": "hunter2", "port": 99});
        let text = schema.check(&value, "global", &["db.password".into()]).unwrap_err().to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("db.password: does not match `") && text.contains("99"), "{text}");
        // Without the secret marked, the validator's words do quote it.
        let text = schema.check(&value, "global", &[]).unwrap_err().to_string();
        assert!(text.contains("hunter2"), "the test checks a message that would quote it: {text}");
        // A schema over a table holding a secret does not quote the table.
        let whole = Schema::compile("db", &json!({"const": {}})).unwrap();
        let text = whole.check(&value, "global", &["db.password".into()]).unwrap_err().to_string();
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn a_schema_cannot_read_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.json");
        std::fs::write(&file, r#"{"const": "from-the-disk"}"#).unwrap();
        let schema = json!({"$ref": format!("file://{}", file.display())});
        let error = Schema::compile("db", &schema).unwrap_err().to_string();
        assert!(error.contains("may refer only to itself"), "{error}");
    }

    #[test]
    fn a_schema_that_is_not_one_is_refused() {
        for bad in [json!(5), json!({"type": "no-such-type"}), json!({"minimum": "x"})] {
            let error = Schema::compile("db", &bad).expect_err(&bad.to_string());
            assert!(error.to_string().contains("Schema for \"db\""), "{error}");
        }
    }
}
