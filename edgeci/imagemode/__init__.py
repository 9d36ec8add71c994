"""Image mode (bootc): the second image kind, a bootable container built from a Containerfile in git.

- source.py: where an image's source lives (blueprints/NAME/Containerfile + checks.yaml) and a line-accurate
  reading of the Containerfile.
- lint.py: edgeci's rules (pinned base, semver version label, bootc labels) and hadolint's findings.
- build.py: buildah build into an OCI archive; digests, base, labels, layers, packages.
- sign.py: containers' own signatures (GPG simple signing, sigstore) and the device's policy.json and
  registries.d that enforce them.
- promote.py: copy the tested digest with its signatures from the stage repository to production, move the
  production tag last, releases log, anti-rollback, refusal when the tag moved behind the gate's back.

See docs/image-mode.md.
"""
