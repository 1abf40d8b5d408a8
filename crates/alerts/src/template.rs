//! Summary templates: `machine {{ key }} failed: {{ value.status.reason }}`.
//!
//! A template is text with names in double braces. A name is a dotted
//! path into the alert's context (a JSON object the engine builds: the
//! event's `key` and `value`, the alert's `labels`, ...). Rendering only
//! substitutes: there are no functions, conditions or loops, so a template
//! can run no code and cannot fail. A name that leads nowhere renders
//! empty; [`crate::rules`] reports the names it can tell lead nowhere
//! when the rules are applied.

use serde_json::Value;

/// The most a rendered template holds, in bytes: an event's value may be
/// large, and a summary is a line.
pub const MAX_RENDERED: usize = 4096;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// A dotted name, split at its dots.
    Name(Vec<String>),
}

impl Template {
    /// Parses `text`; the error says what is wrong, for the caller to put
    /// after the field's path.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").filter(|close| !after[..*close].contains("{{"));
            let Some(close) = close else {
                return Err(format!(
                    "`{{{{` at byte {} is not closed by `}}}}`",
                    text.len() - rest.len() + open
                ));
            };
            let inner = after[..close].trim();
            let name: Vec<String> = inner.split('.').map(str::to_owned).collect();
            let well_formed = name.iter().all(|segment| {
                !segment.is_empty()
                    && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
            if !well_formed {
                return Err(format!(
                    "`{{{{ {inner} }}}}` is not a name like `key`, `labels.severity` or `value.status.reason`"
                ));
            }
            parts.push(Part::Name(name));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { text: text.to_owned(), parts })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The names the template uses, each split at its dots.
    pub fn names(&self) -> impl Iterator<Item = &[String]> {
        self.parts.iter().filter_map(|p| match p {
            Part::Name(name) => Some(name.as_slice()),
            Part::Text(_) => None,
        })
    }

    /// The template with each name replaced by what it leads to in
    /// `context`: a string as it is, a number or boolean as written in
    /// JSON, an object or list as compact JSON, and nothing (null, or no
    /// such field) as the empty string. At most [`MAX_RENDERED`] bytes.
    pub fn render(&self, context: &Value) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Name(name) => {
                    if let Some(value) = lookup(context, name) {
                        push_value(&mut out, value);
                    }
                }
            }
            if out.len() > MAX_RENDERED {
                let mut end = MAX_RENDERED;
                while !out.is_char_boundary(end) {
                    end -= 1;
                }
                out.truncate(end);
                break;
            }
        }
        out
    }
}

fn lookup<'a>(context: &'a Value, name: &[String]) -> Option<&'a Value> {
    name.iter().try_fold(context, |value, segment| match value {
        Value::Object(fields) => fields.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn push_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => {}
        Value::String(s) => out.push_str(s),
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(template: &str, context: Value) -> String {
        Template::parse(template).unwrap().render(&context)
    }

    #[test]
    fn names_are_replaced_by_what_they_lead_to() {
        let context = json!({
            "key": "machines/web",
            "labels": { "severity": "critical" },
            "value": { "status": { "reason": "oom", "code": 137, "ok": false, "tags": ["a", "b"] } },
        });
        let cases = [
            ("machine {{ key }} failed", "machine machines/web failed"),
            ("{{labels.severity}}", "critical"),
            ("{{ value.status.reason }}/{{ value.status.code }}", "oom/137"),
            ("{{ value.status.ok }}", "false"),
            ("{{ value.status.tags }}", r#"["a","b"]"#),
            ("{{ value.status.tags.1 }}", "b"),
            ("no names", "no names"),
            ("", ""),
            ("a }} b", "a }} b"),
        ];
        for (template, want) in cases {
            assert_eq!(render(template, context.clone()), want, "{template}");
        }
    }

    #[test]
    fn unknown_names_render_empty() {
        let context = json!({ "key": "k", "value": "not an object" });
        for template in ["{{ nothing }}", "{{ value.a.b }}", "{{ key.deeper }}", "{{ labels.x }}"] {
            assert_eq!(render(template, context.clone()), "", "{template}");
        }
    }

    #[test]
    fn a_template_is_only_substitution() {
        // What would be code elsewhere is not a name here.
        for bad in ["{{ key | upper }}", "{{ exec(\"rm\") }}", "{{ }}", "{{ a..b }}", "{{ key"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        // And what a value holds is never read as a template.
        assert_eq!(render("{{ value }}", json!({ "value": "{{ key }}", "key": "k" })), "{{ key }}");
    }

    #[test]
    fn a_rendered_template_is_bounded() {
        let big = "é".repeat(MAX_RENDERED);
        let out = render("{{ value }}{{ value }}", json!({ "value": big }));
        assert!(out.len() <= MAX_RENDERED);
        assert!(out.len() > MAX_RENDERED - 4);
    }
}
