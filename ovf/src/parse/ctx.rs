//! Parser context: the document, its envelope namespace, warnings, and the lookups that hide
//! spelling differences between producers.

use roxmltree::{Document, Node};

use crate::error::OvfError;
use crate::model::Dialect;
use crate::ns;

/// Most warnings kept; a hostile descriptor could otherwise produce millions.
const MAX_WARNINGS: usize = 200;

pub(crate) struct Ctx<'a, 'input> {
    pub file: &'a str,
    pub doc: &'a Document<'input>,
    pub text: &'a str,
    pub env_ns: &'static str,
    pub dialect: Dialect,
    pub warnings: Vec<String>,
    /// Required sections this reader does not understand, in document order.
    pub unsupported: Vec<crate::model::UnsupportedSection>,
}

impl<'a, 'input> Ctx<'a, 'input> {
    pub fn new(
        file: &'a str,
        doc: &'a Document<'input>,
        text: &'a str,
        env_ns: &'static str,
        dialect: Dialect,
    ) -> Self {
        Ctx {
            file,
            doc,
            text,
            env_ns,
            dialect,
            warnings: Vec::new(),
            unsupported: Vec::new(),
        }
    }

    pub fn warn(&mut self, msg: impl Into<String>) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(msg.into());
        } else if self.warnings.len() == MAX_WARNINGS {
            self.warnings.push("(further warnings omitted)".into());
        }
    }

    /// Whether `node` is an element of the envelope namespace (or unqualified, as oVirt writes).
    pub fn is_ovf(&self, node: Node) -> bool {
        node.is_element()
            && match node.tag_name().namespace() {
                None => true,
                Some(n) => n == self.env_ns,
            }
    }

    /// Whether `node` is the element `local` of namespace `uri`.
    pub fn is(&self, node: Node, uri: &str, local: &str) -> bool {
        node.is_element()
            && node.tag_name().namespace() == Some(uri)
            && node.tag_name().name() == local
    }

    /// Structural name of an envelope-namespace element: its local name, or for
    /// `Section`/`Content` with `xsi:type="ovf:Foo_Type"`, `Foo`. `None` for foreign elements.
    pub fn element_name(&self, node: Node) -> Option<String> {
        if !self.is_ovf(node) {
            return None;
        }
        let local = node.tag_name().name();
        if local == "Section" || local == "Content" {
            if let Some(t) = node.attribute((ns::XSI, "type")) {
                let t = t.rsplit(':').next().unwrap_or(t);
                return Some(t.strip_suffix("_Type").unwrap_or(t).to_owned());
            }
        }
        Some(local.to_owned())
    }

    /// An OVF attribute, qualified (`ovf:href`) or unqualified (`href`).
    pub fn attr<'n>(&self, node: Node<'n, 'input>, local: &str) -> Option<&'n str> {
        node.attribute((self.env_ns, local))
            .or_else(|| node.attribute(local))
    }

    /// `ovf:required`, default true (DSP0243 §9).
    pub fn required(&self, node: Node) -> bool {
        self.attr(node, "required")
            .map(|v| !matches!(v.trim(), "false" | "0" | "False" | "FALSE"))
            .unwrap_or(true)
    }

    /// All text below `node`, trimmed.
    pub fn text(&self, node: Node) -> String {
        let mut s = String::new();
        for t in node.descendants().filter(Node::is_text) {
            s.push_str(t.text().unwrap_or(""));
        }
        s.trim().to_owned()
    }

    /// Text of the first child element named `local` in any namespace.
    pub fn child_text(&self, node: Node, local: &str) -> Option<String> {
        node.children()
            .find(|c| c.is_element() && c.tag_name().name() == local)
            .map(|c| self.text(c))
    }

    /// The element's source XML.
    pub fn source(&self, node: Node) -> String {
        self.text.get(node.range()).unwrap_or("").to_owned()
    }

    /// 1-based line of the element.
    pub fn line(&self, node: Node) -> u32 {
        self.doc.text_pos_at(node.range().start).row
    }

    /// `Envelope/VirtualSystem/...` path of the element.
    pub fn path(&self, node: Node) -> String {
        let mut parts: Vec<&str> = node
            .ancestors()
            .filter(Node::is_element)
            .map(|n| n.tag_name().name())
            .collect();
        parts.reverse();
        parts.join("/")
    }

    pub fn invalid(&self, node: Node, detail: impl Into<String>) -> OvfError {
        OvfError::Invalid {
            file: self.file.to_owned(),
            element: self.path(node),
            line: self.line(node),
            detail: detail.into(),
        }
    }

    pub fn invalid_attr(&self, node: Node, attr: &str, detail: impl Into<String>) -> OvfError {
        OvfError::Invalid {
            file: self.file.to_owned(),
            element: format!("{}/@{attr}", self.path(node)),
            line: self.line(node),
            detail: detail.into(),
        }
    }

    /// Parses an optional unsigned attribute.
    pub fn attr_u64(&self, node: Node, local: &str) -> Result<Option<u64>, OvfError> {
        match self.attr(node, local) {
            None => Ok(None),
            Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                self.invalid_attr(node, local, format!("{v:?} is not an unsigned integer"))
            }),
        }
    }

    /// An optional attribute that is empty counts as absent (oVirt writes `parentRef=""`).
    pub fn attr_nonempty(&self, node: Node, local: &str) -> Option<String> {
        self.attr(node, local)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

/// XML Schema boolean, plus the capitalized spelling oVirt writes.
pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "true" | "1" | "True" | "TRUE" => Some(true),
        "false" | "0" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}
