//! A minimal XML writer for audit messages: elements, attributes and text, every value escaped.
//! The output has no line breaks at all (a line break inside a value becomes `&#10;`), so one
//! message is one line of the audit file; characters XML 1.0 cannot carry (control characters
//! such as the ESC of ISO 2022 person names) become U+FFFD.

/// An attribute: its name and its value; `None` leaves it out.
pub(crate) type Attr<'a> = (&'static str, Option<&'a str>);

/// A document being written.
#[derive(Debug, Default)]
pub(crate) struct Xml {
    out: String,
}

impl Xml {
    /// A document starting with the XML declaration.
    pub(crate) fn new() -> Self {
        Self {
            out: String::from(r#"<?xml version="1.0" encoding="UTF-8"?>"#),
        }
    }

    /// `<name attrs>`.
    pub(crate) fn open(&mut self, name: &str, attrs: &[Attr<'_>]) {
        self.start(name, attrs);
        self.out.push('>');
    }

    /// `<name attrs/>`.
    pub(crate) fn empty(&mut self, name: &str, attrs: &[Attr<'_>]) {
        self.start(name, attrs);
        self.out.push_str("/>");
    }

    /// `</name>`.
    pub(crate) fn close(&mut self, name: &str) {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
    }

    /// `<name>text</name>`.
    pub(crate) fn text(&mut self, name: &str, text: &str) {
        self.open(name, &[]);
        escape_into(text, &mut self.out);
        self.close(name);
    }

    /// The document.
    pub(crate) fn finish(self) -> String {
        self.out
    }

    fn start(&mut self, name: &str, attrs: &[Attr<'_>]) {
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attrs {
            if let Some(v) = value {
                self.out.push(' ');
                self.out.push_str(key);
                self.out.push_str("=\"");
                escape_into(v, &mut self.out);
                self.out.push('"');
            }
        }
    }
}

/// `text` escaped for an attribute value or element content.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(text, &mut out);
    out
}

fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
}

/// Whether XML 1.0 allows `c` (the Char production, tab/LF/CR handled before).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_line_breaks() {
        assert_eq!(
            escape(r#"O'Brien<&">^Jo"#),
            "O&apos;Brien&lt;&amp;&quot;&gt;^Jo"
        );
        assert_eq!(escape("a\nb\r\tc"), "a&#10;b&#13;&#9;c");
        assert_eq!(escape("\u{1b}$B\u{0}x"), "\u{FFFD}$B\u{FFFD}x");
        assert_eq!(escape("Müller^Zoë 山田"), "Müller^Zoë 山田");
    }

    #[test]
    fn writes_elements_and_leaves_out_absent_attributes() {
        let mut x = Xml::default();
        x.open("A", &[("k", Some("<v>")), ("gone", None)]);
        x.empty("B", &[("n", Some("1"))]);
        x.text("C", "a&b");
        x.close("A");
        assert_eq!(
            x.finish(),
            r#"<A k="&lt;v&gt;"><B n="1"/><C>a&amp;b</C></A>"#
        );
    }
}
