use super::*;

#[derive(Debug, thiserror::Error)]
#[error("{text}")]
struct Layer {
    text: &'static str,
    #[source]
    source: Option<Box<Layer>>,
}

#[test]
fn errors_are_described_with_the_causes_that_add_something() {
    let chain = Layer {
        text: "reqwest: error sending request",
        source: Some(Box::new(Layer {
            text: "error sending request",
            source: Some(Box::new(Layer {
                text: "certificate verify failed",
                source: None,
            })),
        })),
    };
    assert_eq!(
        with_causes(&chain),
        "reqwest: error sending request: certificate verify failed"
    );
}
