//! Secret redaction: the values that must never appear in a configuration error (the database
//! URL and its password), and their removal from messages.

/// Values that must never appear in an error: every string of the `[database]` section (the URL
/// carries the password) but `url_file` (a path, which errors name), and the password part of any
/// URL.
pub(super) fn secrets_in_table(table: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(toml::Value::Table(db)) = table.get("database") {
        for (k, v) in db {
            if k == "url_file" {
                continue;
            }
            if let toml::Value::String(s) = v {
                out.push(s.clone());
                out.extend(url_password(s));
            }
        }
    }
    out
}

/// Secrets of a file that does not parse: the password of every URL in it.
pub(super) fn secrets_in_text(text: &str) -> Vec<String> {
    text.split(|c: char| c == '"' || c == '\'' || c.is_whitespace())
        .filter_map(url_password)
        .collect()
}

/// `pass` of `scheme://user:pass@host...`.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split(['/', '?', '#']).next()?.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_string())
}

/// `url` with its password, if any, replaced (for `Debug` and messages).
pub(super) fn without_password(url: &str) -> String {
    match url_password(url) {
        Some(p) => url.replacen(&format!(":{p}@"), ":<redacted>@", 1),
        None => url.to_string(),
    }
}

/// `message` with every secret replaced.
pub(super) fn redact(message: &str, secrets: &[String]) -> String {
    let mut out = message.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(secret.as_str(), "<redacted>");
    }
    out
}
