//! The pages of `/mail`, written server-side: escaping, the layout, the
//! sign-in form, the search list, one message (its text escaped, its HTML
//! sanitized so nothing remote loads and nothing runs) and error pages.

use super::access::Viewer;
use super::source::MailSummary;
use crate::journal::QueueId;
use mail_parser::{Address, Message, MessageParser, MimeHeaders, PartType};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::OnceLock;

/// Escapes text for HTML content and (double-quoted) attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && !matches!(c, '\n' | '\t') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query-string value (RFC 3986 unreserved kept).
pub fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `12.3 KiB`.
pub fn size(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
    }
}

/// `2026-12-02 14:03 UTC`.
pub fn date(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64).map_or_else(
        || "?".into(),
        |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

const CSS: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}\
header{background:#17324d;color:#fff;padding:.6em 1em;display:flex;gap:1em;align-items:center}\
header .who{margin-left:auto}header form{display:inline;margin:0}\
main{padding:1em;max-width:80em}\
table{border-collapse:collapse;width:100%;background:#fff}\
th,td{border-bottom:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}\
td.n{text-align:right;white-space:nowrap}\
.search{display:flex;flex-wrap:wrap;gap:.6em;align-items:end;margin-bottom:1em}\
.search label{display:flex;flex-direction:column;font-size:.85em}\
.login{max-width:22em;background:#fff;padding:1.2em;border:1px solid #ddd}\
.login label{display:block;margin:.6em 0}.login input{width:100%;box-sizing:border-box}\
.error{background:#fde8e8;border:1px solid #e0a0a0;padding:.6em;margin:.6em 0}\
.note{color:#555;font-size:.9em}\
pre{white-space:pre-wrap;word-wrap:break-word;background:#fff;border:1px solid #ddd;padding:.8em}\
.mailhtml{contain:content;overflow:auto;background:#fff;border:1px solid #ddd;padding:.8em}\
dl.h{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}dl.h dt{font-weight:600}dl.h dd{margin:0}";

/// A whole page. With `signed_in` (user, CSRF token) the header has a
/// sign-out button.
pub fn page(title: &str, signed_in: Option<(&str, &str)>, body: &str) -> String {
    let who = match signed_in {
        Some((user, csrf)) => format!(
            "<span class=\"who\">Signed in as <strong>{}</strong></span>\
             <form method=\"post\" action=\"/mail/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            esc(user),
            esc(csrf)
        ),
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{} · breakwater</title><style>{CSS}</style></head>\n\
         <body><header><a href=\"/mail\" style=\"color:#fff;text-decoration:none\"><strong>breakwater</strong> held mail</a>{who}</header>\n\
         <main>{body}</main></body></html>\n",
        esc(title)
    )
}

/// The sign-in form, with an optional error and the form's CSRF token.
pub fn login(error: Option<&str>, csrf: &str) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    page(
        "Sign in",
        None,
        &format!(
            "<h1>Sign in to read held mail</h1>{error}\
             <form class=\"login\" method=\"post\" action=\"/mail/login\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label>User name <input name=\"user\" autocomplete=\"username\" required maxlength=\"64\" autofocus></label>\
             <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <button type=\"submit\">Sign in</button></form>\
             <p class=\"note\">Administrators: user name <code>admin</code>, the admin token as password.</p>",
            esc(csrf)
        ),
    )
}

/// An error page: a title, what happened, what to do.
pub fn error_page(title: &str, text: &str, signed_in: Option<(&str, &str)>) -> String {
    let back = if signed_in.is_some() {
        "<p><a href=\"/mail\">Back to the list</a></p>"
    } else {
        "<p><a href=\"/mail/login\">Sign in</a></p>"
    };
    page(
        title,
        signed_in,
        &format!(
            "<h1>{}</h1><p class=\"error\">{}</p>{back}",
            esc(title),
            esc(text)
        ),
    )
}

/// What the search form holds (as typed, for refilling it).
#[derive(Debug, Default, Clone)]
pub struct Form {
    pub to: String,
    pub from: String,
    pub subject: String,
    pub since: String,
    pub until: String,
}

impl Form {
    /// The query string of this search (without `before`).
    pub fn query(&self) -> String {
        [
            ("to", &self.to),
            ("from", &self.from),
            ("subject", &self.subject),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", url_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// One row of the list.
#[derive(Debug, Clone)]
pub struct Row {
    pub summary: MailSummary,
    /// The recipients the viewer may see.
    pub to: Vec<String>,
    /// The header From (or the envelope sender).
    pub from: String,
    pub subject: String,
}

/// The search page: form, error, rows, the "more" link.
pub fn list(
    viewer: &Viewer,
    csrf: &str,
    form: &Form,
    error: Option<&str>,
    rows: &[Row],
    next: Option<QueueId>,
) -> String {
    let field = |name: &str, label: &str, value: &str, kind: &str| {
        format!(
            "<label>{label}<input name=\"{name}\" type=\"{kind}\" value=\"{}\" maxlength=\"200\"></label>",
            esc(value)
        )
    };
    let mut b = String::new();
    b.push_str("<h1>Held mail</h1><form class=\"search\" method=\"get\" action=\"/mail\">");
    b.push_str(&field("to", "Recipient", &form.to, "text"));
    b.push_str(&field("from", "Sender", &form.from, "text"));
    b.push_str(&field("subject", "Subject contains", &form.subject, "text"));
    b.push_str(&field("since", "From date", &form.since, "date"));
    b.push_str(&field("until", "To date", &form.until, "date"));
    b.push_str("<button type=\"submit\">Search</button> <a href=\"/mail\">Clear</a></form>");
    if let Some(e) = error {
        let _ = write!(b, "<p class=\"error\">{}</p>", esc(e));
    }
    if viewer.all {
        b.push_str("<p class=\"note\">Signed in with the admin token: every message is shown.</p>");
    }
    if rows.is_empty() {
        b.push_str("<p>No message found.</p>");
    } else {
        b.push_str(
            "<table><thead><tr><th>Date</th><th>From</th><th>To</th><th>Subject</th>\
             <th>Size</th><th>State</th></tr></thead><tbody>",
        );
        for r in rows {
            let subject = if r.subject.is_empty() {
                "(no subject)"
            } else {
                &r.subject
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"/mail/msg/{}\">{}</a></td>\
                 <td class=\"n\">{}</td><td>{}</td></tr>",
                esc(&date(r.summary.arrived_ms)),
                esc(&r.from),
                esc(&r.to.join(", ")),
                r.summary.id,
                esc(subject),
                esc(&size(r.summary.size)),
                esc(&r.summary.state),
            );
        }
        b.push_str("</tbody></table>");
    }
    if let Some(next) = next {
        let q = form.query();
        let sep = if q.is_empty() { "" } else { "&" };
        let _ = write!(
            b,
            "<p><a href=\"/mail?{}{sep}before={next}\">More (older)</a></p>",
            esc(&q)
        );
    }
    b.push_str("<p class=\"note\">Dates are UTC. Newest first.</p>");
    page("Held mail", Some((&viewer.user, csrf)), &b)
}

/// The parts of the head the list shows: Subject and From.
pub fn head_fields(head: &[u8]) -> (String, Option<String>) {
    match MessageParser::default().parse_headers(head) {
        Some(m) => (
            m.subject().map(one_line).unwrap_or_default(),
            m.from().and_then(|a| a.first()).map(addr_text),
        ),
        None => (String::new(), None),
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect()
}

fn addr_text(a: &mail_parser::Addr<'_>) -> String {
    let address = a.address().unwrap_or("");
    match a.name() {
        Some(n) if !n.is_empty() && !address.is_empty() => one_line(&format!("{n} <{address}>")),
        Some(n) if !n.is_empty() => one_line(n),
        _ => one_line(address),
    }
}

fn address_list(a: Option<&Address<'_>>) -> String {
    a.map(|a| a.iter().map(addr_text).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// Messages larger than this are not parsed for reading: headers only.
pub const MAX_RENDER: usize = 10 << 20;
/// Bytes of a message's head parsed when the whole is not.
pub const HEAD_BYTES: usize = 16 * 1024;

/// One message: headers, text part, sanitized HTML part, attachments.
pub fn message(viewer: &Viewer, csrf: &str, summary: &MailSummary, bytes: &[u8]) -> String {
    let id = summary.id;
    let mut b = String::new();
    let _ = write!(
        b,
        "<p><a href=\"/mail\">Back to the list</a> · <a href=\"/mail/msg/{id}/eml\">Download .eml</a> ({})</p>",
        esc(&size(bytes.len() as u64))
    );
    let whole = bytes.len() <= MAX_RENDER;
    let parser = MessageParser::default();
    let parsed = if whole {
        parser.parse(bytes)
    } else {
        parser.parse_headers(&bytes[..HEAD_BYTES.min(bytes.len())])
    };
    let subject = parsed
        .as_ref()
        .and_then(|m| m.subject())
        .map(one_line)
        .unwrap_or_default();
    let _ = write!(
        b,
        "<h1>{}</h1>",
        esc(if subject.is_empty() {
            "(no subject)"
        } else {
            &subject
        })
    );
    b.push_str("<dl class=\"h\">");
    let mut dt = |name: &str, value: &str| {
        if !value.is_empty() {
            let _ = write!(b, "<dt>{}</dt><dd>{}</dd>", esc(name), esc(value));
        }
    };
    if let Some(m) = &parsed {
        dt("From", &address_list(m.from()));
        dt("To", &address_list(m.to()));
        dt("Cc", &address_list(m.cc()));
        dt("Subject", &subject);
        dt(
            "Date",
            &m.date().map(|d| d.to_rfc3339()).unwrap_or_default(),
        );
    }
    dt("Envelope sender", &summary.from);
    dt("Held for", &viewer.visible(&summary.recipients).join(", "));
    dt("Arrived", &date(summary.arrived_ms));
    dt("State", &summary.state);
    dt("Queue id", &id.to_string());
    b.push_str("</dl>");
    match (&parsed, whole) {
        (_, false) => {
            let _ = write!(
                b,
                "<p class=\"error\">This message is {} (more than {}): only its headers are shown. \
                 Download the .eml to read it.</p>",
                esc(&size(bytes.len() as u64)),
                esc(&size(MAX_RENDER as u64))
            );
        }
        (None, true) => b.push_str(
            "<p class=\"error\">This message could not be parsed. Download the .eml to read it.</p>",
        ),
        (Some(m), true) => body(&mut b, m),
    }
    page(&format!("Message {id}"), Some((&viewer.user, csrf)), &b)
}

fn body(b: &mut String, m: &Message<'_>) {
    let text = m.text_bodies().find_map(|p| match &p.body {
        PartType::Text(t) => Some(t.clone()),
        _ => None,
    });
    let html = m.html_bodies().find_map(|p| match &p.body {
        PartType::Html(h) => Some(h.clone()),
        _ => None,
    });
    if let Some(t) = &text {
        let shown: String = t.chars().take(MAX_HTML_BYTES).collect();
        let cut = if shown.len() < t.len() {
            "<p class=\"note\">The text is cut here; download the .eml for the rest.</p>"
        } else {
            ""
        };
        let _ = write!(b, "<h2>Text</h2><pre>{}</pre>{cut}", esc(&shown));
    }
    if let Some(h) = &html {
        match sanitize_bounded(h) {
            Ok(clean) => {
                let _ = write!(
                    b,
                    "<h2>HTML</h2><p class=\"note\">Shown without remote images, styles, scripts or links.</p>\
                     <div class=\"mailhtml\">{clean}</div>",
                );
            }
            Err(why) => {
                let text: String = mail_parser::decoders::html::html_to_text(h)
                    .chars()
                    .take(MAX_HTML_BYTES)
                    .collect();
                let _ = write!(
                    b,
                    "<h2>HTML</h2><p class=\"note\">{}: only its text is shown. Download the .eml to see it as sent.</p>\
                     <pre>{}</pre>",
                    esc(&why),
                    esc(&text)
                );
            }
        }
    }
    if text.is_none() && html.is_none() {
        b.push_str("<p>(This message has no text.)</p>");
    }
    let attachments: Vec<String> = m
        .attachments()
        .map(|p| {
            let name = p
                .attachment_name()
                .map(one_line)
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| match p.content_type() {
                    Some(ct) => format!("(unnamed {}/{})", ct.ctype(), ct.subtype().unwrap_or("*")),
                    None => "(unnamed)".into(),
                });
            format!(
                "<li>{} ({})</li>",
                esc(&name),
                esc(&size(p.contents().len() as u64))
            )
        })
        .collect();
    if !attachments.is_empty() {
        let _ = write!(
            b,
            "<h2>Attachments</h2><ul>{}</ul><p class=\"note\">Download the .eml to open attachments.</p>",
            attachments.concat()
        );
    }
}

/// Inline CSS properties kept in `style` attributes (none of them can take
/// a URL).
const STYLE_PROPERTIES: &[&str] = &[
    "color",
    "background-color",
    "font",
    "font-family",
    "font-size",
    "font-style",
    "font-weight",
    "font-variant",
    "text-align",
    "text-decoration",
    "text-transform",
    "text-indent",
    "letter-spacing",
    "word-spacing",
    "line-height",
    "white-space",
    "vertical-align",
    "direction",
    "margin",
    "margin-top",
    "margin-right",
    "margin-bottom",
    "margin-left",
    "padding",
    "padding-top",
    "padding-right",
    "padding-bottom",
    "padding-left",
    "border",
    "border-top",
    "border-right",
    "border-bottom",
    "border-left",
    "border-color",
    "border-style",
    "border-width",
    "border-radius",
    "border-collapse",
    "border-spacing",
    "width",
    "height",
    "max-width",
    "min-width",
    "max-height",
    "min-height",
    "display",
    "table-layout",
    "float",
    "clear",
];

/// Elements dropped with everything inside them.
const DROP_WITH_CONTENT: &[&str] = &[
    "script",
    "style",
    "title",
    "head",
    "iframe",
    "frame",
    "frameset",
    "object",
    "embed",
    "applet",
    "noscript",
    "noembed",
    "noframes",
    "template",
    "svg",
    "math",
    "link",
    "meta",
    "base",
    "form",
    "textarea",
    "select",
    "button",
    "audio",
    "video",
    "xmp",
    "plaintext",
];

/// True if a CSS declaration list could load something or hide a URL.
fn style_is_risky(value: &str) -> bool {
    let v: String = value
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect();
    [
        "url(",
        "image(",
        "image-set(",
        "expression(",
        "@import",
        "\\",
        "attr(",
        "var(",
        "javascript:",
        "behavior",
        "binding",
        "src(",
    ]
    .iter()
    .any(|n| v.contains(n))
}

fn sanitizer() -> &'static ammonia::Builder<'static> {
    static B: OnceLock<ammonia::Builder<'static>> = OnceLock::new();
    B.get_or_init(|| {
        let mut b = ammonia::Builder::default();
        b.rm_tag_attributes("a", &["href", "hreflang"])
            .rm_tag_attributes("blockquote", &["cite"])
            .rm_tag_attributes("q", &["cite"])
            .rm_tag_attributes("del", &["cite"])
            .rm_tag_attributes("ins", &["cite"])
            .rm_tags(&["map", "area"])
            .add_clean_content_tags(DROP_WITH_CONTENT)
            .add_generic_attributes(&["style"])
            .filter_style_properties(STYLE_PROPERTIES.iter().copied().collect::<HashSet<_>>())
            // Only inline images (data:) may stay; a relative URL resolves to
            // this server, so it goes too.
            .url_schemes(["data"].into_iter().collect())
            .url_relative(ammonia::UrlRelative::Deny)
            .link_rel(Some("noopener noreferrer"))
            .strip_comments(true)
            .attribute_filter(|element, attribute, value| match (element, attribute) {
                (_, "style") if style_is_risky(value) => None,
                ("img", "src") => {
                    let v = value.trim_start().to_ascii_lowercase();
                    v.starts_with("data:image/").then_some(Cow::Borrowed(value))
                }
                _ => Some(Cow::Borrowed(value)),
            });
        b
    })
}

/// Largest HTML part sanitized for display (larger ones show as text).
pub const MAX_HTML_BYTES: usize = 2 << 20;
/// Most start tags in an HTML part sanitized for display: the HTML parser's
/// work grows with the square of the nesting (measured unoptimized: 5,000
/// nested `<div>`s 2.9 s, 5,000 distinct `<b>`s 15 s), so a message built to
/// stall the server shows as text instead.
pub const MAX_HTML_TAGS: usize = 3_000;

/// [`sanitize`] when `html` is within [`MAX_HTML_BYTES`] and
/// [`MAX_HTML_TAGS`]; else why not.
pub fn sanitize_bounded(html: &str) -> Result<String, String> {
    if html.len() > MAX_HTML_BYTES {
        return Err(format!(
            "This HTML part is {} (more than {})",
            size(html.len() as u64),
            size(MAX_HTML_BYTES as u64)
        ));
    }
    let tags = html
        .as_bytes()
        .windows(2)
        .filter(|w| w[0] == b'<' && w[1].is_ascii_alphabetic())
        .count();
    if tags > MAX_HTML_TAGS {
        return Err(format!(
            "This HTML part has {tags} tags (more than {MAX_HTML_TAGS})"
        ));
    }
    Ok(sanitize(html))
}

/// HTML from a message made safe to show inside our page: no scripts, event
/// handlers, frames, forms, style sheets or links to follow, and nothing that
/// loads from elsewhere (images only as inline `data:`).
pub fn sanitize(html: &str) -> String {
    sanitizer().clean(html).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(esc("a\u{0}b\nc"), "a\u{FFFD}b\nc");
        assert_eq!(url_escape("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn sanitizer_strips_what_runs_or_loads() {
        let hostile = r#"<html><head><title>secret-title</title>
            <link rel="stylesheet" href="http://127.0.0.2:1/s.css">
            <style>body{background:url(http://127.0.0.2:1/bg.png)}</style>
            <script>document.title='pwned'</script><base href="http://evil.test/"></head>
            <body onload="alert(1)"><p style="color:red;background:url(http://127.0.0.2:1/p.png)">hi</p>
            <p style="color:blue">blue</p>
            <img src="http://127.0.0.2:1/x.png" onerror="document.title='pwned'" alt="remote">
            <img src="//127.0.0.2:1/y.png"><img src="/local.png"><img srcset="http://127.0.0.2:1/z.png 2x">
            <img src="data:image/png;base64,iVBORw0KGgo=" alt="inline">
            <a href="javascript:alert(1)">js link</a> <a href="http://evil.test/">web link</a>
            <iframe src="http://127.0.0.2:1/f"></iframe><object data="http://127.0.0.2:1/o"></object>
            <svg><image href="http://127.0.0.2:1/s.png"/></svg>
            <form action="http://evil.test/"><input name=x></form>
            <div style="background-image: u\72l(http://127.0.0.2:1/e.png)">escaped</div>
            <table background="http://127.0.0.2:1/t.png"><tr><td>cell</td></tr></table>
            </body></html>"#;
        let clean = sanitize(hostile);
        let lower = clean.to_ascii_lowercase();
        for banned in [
            "<script",
            "onerror",
            "onload",
            "<link",
            "<style",
            "<iframe",
            "<object",
            "<svg",
            "<form",
            "<input",
            "<base",
            "javascript:",
            "http:",
            "https:",
            "//127",
            "url(",
            "srcset",
            "href",
            "background=",
            "pwned",
            "/local.png",
        ] {
            assert!(!lower.contains(banned), "{banned:?} left in {clean}");
        }
        for kept in [
            "hi",
            "blue",
            "color:blue",
            "data:image/png;base64,iVBORw0KGgo=",
            "js link",
            "web link",
            "cell",
            "escaped",
        ] {
            assert!(clean.contains(kept), "{kept:?} lost from {clean}");
        }
        assert!(
            !clean.contains("secret-title"),
            "title text dropped: {clean}"
        );
    }

    #[test]
    fn html_too_big_or_too_complex_is_not_parsed() {
        let nested = "<div>".repeat(MAX_HTML_TAGS + 1);
        let e = sanitize_bounded(&nested).unwrap_err();
        assert!(e.contains("3001 tags"), "{e}");
        assert!(sanitize_bounded(&"<p>x</p>".repeat(MAX_HTML_TAGS)).is_ok());
        let big = "x".repeat(MAX_HTML_BYTES + 1);
        assert!(sanitize_bounded(&big).unwrap_err().contains("MiB"));
        // Shown as text instead, escaped.
        let v = super::super::access::Viewer::admin();
        let summary = MailSummary {
            id: QueueId(1),
            from: "s@client.test".into(),
            recipients: vec!["a@example.com".into()],
            arrived_ms: 0,
            size: 0,
            state: "held".into(),
        };
        let msg = format!(
            "Content-Type: text/html\r\n\r\n<p>&lt;script&gt;visible</p>{}",
            "<b>".repeat(MAX_HTML_TAGS)
        );
        let page = message(&v, "c", &summary, msg.as_bytes());
        assert!(
            page.contains("tags (more than 3000): only its text is shown"),
            "{page}"
        );
        assert!(page.contains("&lt;script&gt;visible"), "{page}");
        assert!(!page.contains("<script"), "{page}");
    }

    #[test]
    fn message_pages_list_attachments_and_stop_at_the_size_limit() {
        let v = super::super::access::Viewer::user("alice", &["alice@example.com".into()]);
        let summary = MailSummary {
            id: QueueId(0xAB),
            from: "s@client.test".into(),
            recipients: vec!["alice@example.com".into(), "bob@example.com".into()],
            arrived_ms: 0,
            size: 0,
            state: "held".into(),
        };
        let msg = b"From: S <s@client.test>\r\nTo: alice@example.com\r\nCc: bob@example.com\r\n\
            Subject: with attachment\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\
            Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\n\
            see <attached>\r\n--x\r\nContent-Type: application/pdf\r\n\
            Content-Disposition: attachment; filename=\"report<1>.pdf\"\r\n\
            Content-Transfer-Encoding: base64\r\n\r\nAAECAwQF\r\n--x--\r\n";
        let page = message(&v, "tok", &summary, msg);
        for want in [
            "<dt>Subject</dt><dd>with attachment</dd>",
            "<dt>Cc</dt><dd>bob@example.com</dd>",
            "<dt>Date</dt><dd>2026-12-01T10:00:00Z</dd>",
            "<dt>Held for</dt><dd>alice@example.com</dd>",
            "<pre>see &lt;attached&gt;",
            "<li>report&lt;1&gt;.pdf (6 B)</li>",
            "/mail/msg/00000000000000AB/eml",
            "name=\"csrf\" value=\"tok\"",
        ] {
            assert!(page.contains(want), "{want} not in {page}");
        }
        let mut big = b"Subject: big one\r\n\r\n".to_vec();
        big.resize(MAX_RENDER + 1, b'x');
        let page = message(&v, "tok", &summary, &big);
        assert!(page.contains("<h1>big one</h1>"), "{page}");
        assert!(page.contains("only its headers are shown"), "{page}");
        assert!(!page.contains("xxxxxxxx"), "the body is not shown");
    }

    #[test]
    fn head_fields_decode_subject_and_from() {
        let (s, f) = head_fields(
            b"From: \"Ann\" <ann@client.test>\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nx",
        );
        assert_eq!(s, "Grüße");
        assert_eq!(f.as_deref(), Some("Ann <ann@client.test>"));
        assert_eq!(head_fields(b"").0, "");
    }
}
