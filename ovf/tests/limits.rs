//! Descriptors built to make the XML parser slow are refused by the pre-scan, naming the
//! file, the element and the limit.

use vdisk_ovf::{parse_descriptor, OvfError, MAX_ATTRIBUTES_PER_ELEMENT};

const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References/>
  <VirtualSystem ovf:id="vm"><Info>x</Info>"#;
const TAIL: &str = "</VirtualSystem></Envelope>";

#[test]
fn an_element_with_100000_attributes_is_refused_by_the_limit() {
    let attrs: String = (0..100_000).map(|i| format!(" a{i}=\"\"")).collect();
    let text = format!("{HEAD}<Junk{attrs}/>{TAIL}");
    match parse_descriptor(text.as_bytes(), "big.ovf") {
        Err(OvfError::Limit {
            file, what, max, ..
        }) => {
            assert_eq!(file, "big.ovf");
            assert!(what.contains("<Junk>"), "{what}");
            assert_eq!(max, MAX_ATTRIBUTES_PER_ELEMENT);
        }
        other => panic!("expected the attribute limit, got {other:?}"),
    }
}

#[test]
fn thousands_of_namespace_declarations_are_refused() {
    let decls: String = (0..2000)
        .map(|i| format!("<Junk xmlns:n{i}=\"urn:x:{i}\" ovf:required=\"false\"/>"))
        .collect();
    let text = format!("{HEAD}{decls}{TAIL}");
    let e = parse_descriptor(text.as_bytes(), "ns.ovf").unwrap_err();
    assert!(matches!(e, OvfError::Limit { .. }), "{e}");
    assert!(e.to_string().contains("namespace"), "{e}");
}
