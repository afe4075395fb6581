"""Making delta bundles on the connected side (``regpatch bundle``).

``make_bundle`` reads one image (a tag or digest in a registry through its
API, or a local OCI layout / ``dir:`` / staged folder through
``regpatch.bundle.open.load_bundle``) and writes an OCI image layout to a folder or
``s3://bucket/prefix`` holding the image's manifests and only the configs and
layers that none of the ``--have`` contents files lists, plus
``regpatch-bundle.json`` and, with a signing key, its detached signature (see
``signing``).

Every blob is streamed from the source into the destination while it is
hashed (memory flat, a few MiB per blob in flight) and only becomes a blob of
the layout once its digest and size match:

* folder: bytes go to ``DEST/.regpatch-partial/sha256-<hex>`` and are renamed
  to ``blobs/sha256/<hex>`` after the check. A re-run hashes a partial file
  left by an interrupted run and fetches only the rest (a ``Range`` GET from
  a registry, a seek in a local file); a blob already in ``blobs/`` is hashed
  and kept when it matches;
* S3: a multipart upload (``S3Options.part_size`` parts) completed only after
  the digest matched, aborted otherwise, with the digest in the object's
  metadata: a re-run skips objects with the right size and that metadata,
  and an interrupted blob starts again.

Write order: blobs, ``oci-layout``, ``index.json``, then the old signature is
removed, ``regpatch-bundle.json`` written and signed last. A destination is
accepted when it is new, empty, or a bundle an earlier run wrote (it holds
``regpatch-bundle.json`` or the partial marker); blobs of the earlier bundle
that this one does not carry are removed from it, since the site refuses
unlisted files.
"""

# sources: where the image is read (a registry's API, a local layout);  destinations: a folder or
# s3://, written blob by blob, verified;  make: make_bundle, the order of the whole job.
