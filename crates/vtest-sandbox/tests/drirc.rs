//! The worker's box hides Mesa's drirc directory (`DRIRC_DIR`) because
//! nothing in it can apply to a GL worker: every option sits inside an
//! `<application>` (matched by executable name, which is `vtestd`) or an
//! `<engine>` (Vulkan only). This checks that claim against the host's
//! Mesa, so that a Mesa whose list starts to matter fails here.

use std::path::Path;

/// The executable name Mesa sees in a worker.
const WORKER: &str = "vtestd";

/// Start tags (name, attributes) and end tags of an XML text, comments,
/// declarations and processing instructions skipped.
fn tags(text: &str) -> Vec<(bool, String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        rest = &rest[start..];
        let end = if rest.starts_with("<!--") {
            rest.find("-->").map(|i| i + 3)
        } else if rest.starts_with("<!DOCTYPE")
            && rest
                .find('[')
                .is_some_and(|i| rest.find('>').is_some_and(|j| i < j))
        {
            // An internal subset, with its own `<!ELEMENT ...>` inside.
            rest.find("]>").map(|i| i + 2)
        } else {
            rest.find('>').map(|i| i + 1)
        };
        let end = end.expect("an unterminated tag");
        let tag = &rest[1..end - 1];
        rest = &rest[end..];
        if tag.starts_with('!') || tag.starts_with('?') {
            continue;
        }
        let closing = tag.starts_with('/');
        let body = tag.trim_start_matches('/').trim_end_matches('/');
        let (name, attrs) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
        out.push((closing, name.to_string(), attrs.to_string()));
        if tag.ends_with('/') {
            out.push((true, name.to_string(), String::new()));
        }
    }
    out
}

fn attribute(attrs: &str, key: &str) -> Option<String> {
    let at = attrs.find(&format!("{key}=\""))? + key.len() + 2;
    let len = attrs[at..].find('"')?;
    Some(attrs[at..at + len].to_string())
}

#[test]
fn nothing_in_mesas_drirc_applies_to_a_gl_worker() {
    let dir = Path::new(vtest_sandbox::DRIRC_DIR);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e} (the tests need Mesa's drirc)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no drirc file in {}", dir.display());
    let mut options = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut stack: Vec<String> = Vec::new();
        for (closing, name, attrs) in tags(&text) {
            if closing {
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.as_str()),
                    "{}",
                    file.display()
                );
                continue;
            }
            if name == "option" {
                options += 1;
                assert!(
                    stack.iter().any(|t| t == "application" || t == "engine"),
                    "{}: option {attrs} applies outside an application or engine",
                    file.display()
                );
            }
            if name == "application" {
                assert_ne!(attribute(&attrs, "executable").as_deref(), Some(WORKER));
                if let Some(re) = attribute(&attrs, "executable_regexp") {
                    let re = regex::Regex::new(&re).unwrap();
                    assert!(!re.is_match(WORKER), "{}: {attrs}", file.display());
                }
            }
            stack.push(name);
        }
        assert!(stack.is_empty(), "{}: unclosed {stack:?}", file.display());
    }
    assert!(
        options > 100,
        "only {options} options parsed: the scanner is broken"
    );
}
