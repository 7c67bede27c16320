//! Keeping secrets out of messages and logs.

/// Replaces the password of a connection URL (`scheme://user:password@host/…`) with `***`.
/// Text that is not such a URL is returned unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return redact_query(url);
    };
    let userinfo = &authority[..at];
    let redacted_userinfo = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => userinfo.to_owned(),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..authority_start]);
    out.push_str(&redacted_userinfo);
    out.push_str(&rest[at..]);
    redact_query(&out)
}

/// Hides `password=` query parameters (as in `?password=secret`).
fn redact_query(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_owned();
    };
    let (head, query) = url.split_at(q + 1);
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{head}{}", parts.join("&"))
}

/// Removes every occurrence of `secret` from `text` (for driver messages that echo a URL).
pub fn scrub(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(secret) if !secret.is_empty() => text.replace(secret, "***"),
        _ => text.to_owned(),
    }
}

/// The password of a connection URL (`scheme://user:password@host/…` or `?password=…`), both
/// as written and percent-decoded, so that it can be scrubbed from driver messages that echo
/// it ([`scrub_all`]).
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@')
            && let Some((_, password)) = authority[..at].split_once(':')
        {
            secrets.push(password.to_owned());
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=')
                && key.eq_ignore_ascii_case("password")
            {
                secrets.push(value.to_owned());
            }
        }
    }
    let decoded: Vec<String> = secrets.iter().map(|s| percent_decode(s)).collect();
    secrets.extend(decoded);
    secrets.retain(|s| !s.is_empty());
    secrets.sort();
    secrets.dedup();
    secrets
}

/// Removes every one of `secrets` from `text`.
pub fn scrub_all(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text.to_owned(), |text, secret| scrub(&text, Some(secret)))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_passwords_in_urls() {
        assert_eq!(url_secrets("postgres://app:s3cret@db/x"), vec!["s3cret"]);
        assert_eq!(
            url_secrets("postgres://app:p%40ss@db/x"),
            vec!["p%40ss", "p@ss"]
        );
        assert_eq!(
            url_secrets("postgres://db/x?user=a&password=hunter2"),
            vec!["hunter2"]
        );
        assert!(url_secrets("postgres://app@db/x").is_empty());
        assert!(url_secrets("not a url").is_empty());
    }

    #[test]
    fn scrubs_every_secret() {
        let secrets = url_secrets("amqp://app:p%40ss@rabbit/%2f");
        assert_eq!(
            scrub_all("failed for p@ss and p%40ss", &secrets),
            "failed for *** and ***"
        );
    }

    #[test]
    fn hides_the_password() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/orders"),
            "postgres://app:***@db:5432/orders"
        );
        assert_eq!(
            redact_url("amqp://guest:p@ss@host/vhost"),
            "amqp://guest:***@host/vhost"
        );
        assert_eq!(
            redact_url("postgres://db/x?user=a&password=hunter2"),
            "postgres://db/x?user=a&password=***"
        );
    }

    #[test]
    fn leaves_other_text_alone() {
        assert_eq!(redact_url("sqlite://herald.db"), "sqlite://herald.db");
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
