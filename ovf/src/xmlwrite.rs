//! A small indenting XML writer with correct escaping. Characters XML 1.0 cannot carry
//! (most C0 controls, U+FFFE/U+FFFF) are replaced by U+FFFD; whitespace in attribute values
//! is written as character references so parsers' attribute normalization keeps it.

pub(crate) struct XmlWriter {
    out: String,
    stack: Vec<String>,
}

fn legal(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

pub(crate) fn escape_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c if legal(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
}

pub(crate) fn escape_attr(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if legal(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
}

impl XmlWriter {
    pub fn new() -> Self {
        XmlWriter {
            out: String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
            stack: Vec::new(),
        }
    }

    fn indent(&mut self) {
        for _ in 0..self.stack.len() {
            self.out.push_str("  ");
        }
    }

    fn open(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.indent();
        self.out.push('<');
        self.out.push_str(name);
        for (k, v) in attrs {
            self.out.push(' ');
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_attr(v, &mut self.out);
            self.out.push('"');
        }
    }

    /// `<name attrs>` and descend.
    pub fn start(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.open(name, attrs);
        self.out.push_str(">\n");
        self.stack.push(name.to_owned());
    }

    /// `<name attrs/>`.
    pub fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.open(name, attrs);
        self.out.push_str("/>\n");
    }

    /// `<name attrs>text</name>`.
    pub fn leaf(&mut self, name: &str, attrs: &[(&str, &str)], text: &str) {
        self.open(name, attrs);
        self.out.push('>');
        escape_text(text, &mut self.out);
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\n");
    }

    /// Closes the innermost open element.
    pub fn end(&mut self) {
        if let Some(name) = self.stack.pop() {
            self.indent();
            self.out.push_str("</");
            self.out.push_str(&name);
            self.out.push_str(">\n");
        }
    }

    /// Closes everything and returns the document.
    pub fn finish(mut self) -> String {
        while !self.stack.is_empty() {
            self.end();
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        let mut w = XmlWriter::new();
        w.start("a", &[("k", "x\"<&>\n\ty")]);
        w.leaf("b", &[], "1 < 2 & 3 > \u{1} \r");
        w.empty("c", &[]);
        let doc = w.finish();
        let parsed = roxmltree::Document::parse(&doc).unwrap();
        let a = parsed.root_element();
        assert_eq!(a.attribute("k"), Some("x\"<&>\n\ty"));
        let b = a.children().find(|n| n.has_tag_name("b")).unwrap();
        assert_eq!(b.text(), Some("1 < 2 & 3 > \u{FFFD} \r"));
    }
}
