//! The real datasets load as documented.

mod common;

use fedtune::agent::data::{FASHION_MNIST_DIR, load_fashion_mnist};

#[test]
fn the_bundled_digits_split_matches_its_description() {
    let data = common::digits();
    assert_eq!(data.dataset.len(), 1797);
    assert_eq!(data.dataset.dim(), 64);
    assert_eq!(data.dataset.classes(), 10);
    assert!(data.dataset.features().iter().all(|&x| (0.0..=1.0).contains(&x)));
    assert_eq!(data.clients(), 10);
    assert_eq!(data.global_test().unwrap().len(), 360);
    let rows: usize = (0..10)
        .map(|i| data.client(i).map(|(t, v)| t.len() + v.len()).unwrap())
        .sum();
    assert_eq!(rows + 360, 1797);
}

/// Fashion-MNIST comes from the Debian package `dataset-fashion-mnist` (installed by
/// `.ci/run`).
#[test]
fn fashion_mnist_loads_from_the_debian_package() {
    let test = load_fashion_mnist(FASHION_MNIST_DIR, false).expect("apt-get install dataset-fashion-mnist");
    assert_eq!((test.len(), test.dim(), test.classes()), (10_000, 784, 10));
    assert_eq!(test.label_counts(), vec![1000; 10]);
}
