"""Signed delta bundles: the descriptor, keys and signatures, and the site's check.

A bundle made by ``regpatch bundle`` is an OCI image layout plus two files:

``regpatch-bundle.json``
    what the bundle is (``BundleDescriptor``): the image (manifest digest,
    child manifests with their platforms, intended repository and tag), every
    blob the bundle carries with digest and size, the sha256 of ``index.json``
    and ``oci-layout``, the blobs it assumes the site already holds and the
    ``contents`` files (name and sha256) that said so, the tool and the time.
``regpatch-bundle.json.sig``
    a detached signature over the exact bytes of ``regpatch-bundle.json``:
    Ed25519 (64 raw bytes) or ECDSA P-256 over SHA-256 (DER), exactly what
    ``openssl pkeyutl -sign -rawin`` writes, so ``openssl pkeyutl -verify
    -pubin -inkey key.pub -rawin -in regpatch-bundle.json -sigfile
    regpatch-bundle.json.sig`` checks it without regpatch.

Keys are PEM files as ``openssl genpkey`` writes them (PKCS#8 private keys,
SubjectPublicKeyInfo public keys), read with the ``cryptography`` library.
An encrypted private key is opened with ``$REGPATCH_SIGN_KEY_PASSWORD``; no
key material or password ever appears in a log or an error.

``check_bundle`` runs on the site before anything is staged. Why every byte
ends up checked, each once:

* the signature binds ``regpatch-bundle.json``; it is verified before the JSON
  is even parsed;
* ``index.json`` and ``oci-layout`` are hashed against the descriptor (small);
  so is every manifest (small), which fixes every config and layer digest;
* the listing is checked against the descriptor: every file of the bundle is
  listed, with its size, and every listed blob is there. A blob file's name
  is its digest, so a renamed, added, removed, truncated or grown file is
  refused here without reading it;
* a config or layer with the right name and size but altered bytes is caught
  by the patch's own staging step, which hashes every blob while copying it
  into ``<root>/.regpatch/staging`` and refuses a mismatch (``DigestMismatch``,
  exit 3) before anything under ``docker/registry/v2`` is written. Hashing it
  here as well would read every layer twice;
* the staging step does not read a bundle blob that the registry already
  holds with the right size (it verifies the registry's copy instead) or that
  an earlier run already staged and verified. Those few blobs, and only
  those, are hashed here, so that no altered byte of the bundle passes
  unnoticed. (With ``--cache-dir`` an S3 bundle's blob found in the cache is
  taken from the cache, verified against the same digest: the bundle's own
  copy is then never read and not checked.)
"""

# descriptor: regpatch-bundle.json, parsed strictly;  keys: PEM keys, signatures, keygen;
# check: the site's check of a bundle (check_bundle), before anything is staged.
