//! Checkpoints' encoding.

use super::*;

#[test]
fn checkpoints_decode_only_when_whole() {
    let full = encode_checkpoint(state(3, 257)).unwrap();
    assert_eq!(decode_checkpoint(&full).unwrap(), state(3, 257));
    // The vectors travel as raw bytes: the blob is barely larger than them.
    assert!(full.len() < 2 * 257 * 4 + 1024, "{} bytes", full.len());
    for cut in [0, 3, 5, 9, full.len() / 2, full.len() - 1] {
        assert!(
            matches!(
                decode_checkpoint(&full[..cut]),
                Err(CheckpointError::Truncated(_) | CheckpointError::BadMagic | CheckpointError::Checksum { .. })
            ),
            "cut at {cut}"
        );
    }
    let mut trailing = full.clone();
    trailing.push(0);
    assert!(matches!(
        decode_checkpoint(&trailing),
        Err(CheckpointError::Checksum { .. })
    ));
    // One flipped bit in the model's values is caught.
    let mut flipped = full.clone();
    let at = full.len() - 100;
    flipped[at] ^= 0x10;
    assert!(matches!(
        decode_checkpoint(&flipped),
        Err(CheckpointError::Checksum { .. })
    ));
    let mut newer = full.clone();
    newer[4] = 9;
    assert_eq!(decode_checkpoint(&newer), Err(CheckpointError::NewerFormat(9)));
    let mut magic = full;
    magic[0] = b'X';
    assert_eq!(decode_checkpoint(&magic), Err(CheckpointError::BadMagic));
}
