//! Human replies (being written; these placeholders keep the crate building).

/// Placeholder.
pub fn reply_text(text: &str) -> String {
    text.trim().to_owned()
}

/// Placeholder.
pub fn html_to_text(html: &str) -> String {
    html.to_owned()
}

/// Placeholder.
pub fn human_reply(text: Option<&str>, html: Option<&str>) -> String {
    match (text, html) {
        (Some(t), _) => reply_text(t),
        (None, Some(h)) => reply_text(&html_to_text(h)),
        (None, None) => String::new(),
    }
}
