//! Cross-site request forgery: every dashboard POST must carry an `Origin` header naming the
//! host the hub was reached on. Browsers send it on every POST and a page on another site cannot
//! forge it, so a missing or foreign origin is refused (the session cookie is also SameSite=Strict;
//! this check does not depend on that).

use axum::http::{header, HeaderMap};

/// `host[:port]` in lower case with the port always written, `None` if it is not one.
fn authority(host: &str, port: Option<u16>, default_port: u16) -> Option<String> {
    if host.is_empty() || host.len() > 255 {
        return None;
    }
    Some(format!("{}:{}", host.to_ascii_lowercase(), port.unwrap_or(default_port)))
}

/// The `Host` header as `host:port` (default port from the scheme the origin used).
fn host_authority(host: &str, default_port: u16) -> Option<String> {
    let url = url::Url::parse(&format!("http://{host}/")).ok()?;
    if url.username() != "" || url.password().is_some() || url.path() != "/" {
        return None;
    }
    authority(url.host_str()?, url.port(), default_port)
}

/// Ok when the request's `Origin` is the hub itself as the browser reached it. Under TLS the
/// origin must be `https`; without it either scheme is accepted (a TLS proxy in front).
pub fn check_origin(headers: &HeaderMap, tls: bool) -> Result<(), String> {
    const WHY: &str =
        "the dashboard accepts a form only from its own pages (protection against cross-site request forgery)";
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Err(format!(
            "refused: the request has no Origin header, and {WHY}. Submit the form from the dashboard in a current browser."
        ));
    };
    let origin = origin.to_str().unwrap_or("(not text)");
    let shown: String = origin.chars().take(200).collect();
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return Err(format!("refused: the request has no Host header to compare its Origin {shown:?} with; {WHY}"));
    };
    let parsed = url::Url::parse(origin).ok().filter(|u| matches!(u.scheme(), "http" | "https"));
    let Some(o) = parsed else {
        return Err(format!("refused: the form came from {shown:?}, which is not this hub; {WHY}"));
    };
    if tls && o.scheme() != "https" {
        return Err(format!("refused: the form came from {shown:?} over plain HTTP, but this hub serves HTTPS; {WHY}"));
    }
    let default_port = if o.scheme() == "https" { 443 } else { 80 };
    let theirs = o.host_str().and_then(|h| authority(h, o.port(), default_port));
    let ours = host_authority(host, default_port);
    match (theirs, ours) {
        (Some(a), Some(b)) if a == b => Ok(()),
        _ => {
            let host: String = host.chars().take(200).collect();
            Err(format!("refused: the form came from {shown:?}, not from this hub ({host}); {WHY}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(origin: Option<&str>, host: Option<&str>) -> HeaderMap {
        let mut m = HeaderMap::new();
        if let Some(o) = origin {
            m.insert(header::ORIGIN, o.parse().unwrap());
        }
        if let Some(x) = host {
            m.insert(header::HOST, x.parse().unwrap());
        }
        m
    }

    #[test]
    fn only_the_hubs_own_origin_passes() {
        assert!(check_origin(&h(Some("http://127.0.0.1:4000"), Some("127.0.0.1:4000")), false).is_ok());
        assert!(check_origin(&h(Some("http://Hub.LAN"), Some("hub.lan:80")), false).is_ok());
        assert!(check_origin(&h(Some("https://hub.lan"), Some("hub.lan")), true).is_ok());
        assert!(check_origin(&h(Some("https://hub.lan"), Some("hub.lan")), false).is_ok(), "behind a TLS proxy");
        assert!(check_origin(&h(Some("http://[::1]:4000"), Some("[::1]:4000")), false).is_ok());
        for (origin, host, tls) in [
            (None, Some("127.0.0.1:4000"), false),
            (Some("null"), Some("127.0.0.1:4000"), false),
            (Some("http://evil.example"), Some("127.0.0.1:4000"), false),
            (Some("http://127.0.0.1:4001"), Some("127.0.0.1:4000"), false),
            (Some("http://hub.lan"), Some("hub.lan"), true),
            (Some("http://hub.lan.evil.example"), Some("hub.lan"), false),
            (Some("http://127.0.0.1:4000"), None, false),
            (Some("http://127.0.0.1:4000"), Some("user@127.0.0.1:4000"), false),
            (Some("file://"), Some("127.0.0.1:4000"), false),
        ] {
            let e = check_origin(&h(origin, host), tls).unwrap_err();
            assert!(e.starts_with("refused") && e.contains("cross-site request forgery"), "{e}");
        }
    }
}
