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

#[cfg(test)]
mod tests {
    use super::*;

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
