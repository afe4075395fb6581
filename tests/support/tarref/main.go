// Command tarref prints what Go's archive/tar reads from a tar archive, as the
// reference regpatch's tar reader is checked against (tests/e2e/test_tar_differential.py).
//
//	tarref list ARCHIVE          one JSON line per header Next() returns, then {"end":true}
//	                             or {"error":"..."} as Go reports it
//	tarref extract ARCHIVE DIR   the same lines, while extracting into DIR the way
//	                             containers/storage 1.43's pkg/archive.Unpack does (what
//	                             skopeo's oci-archive: transport does), then one line per
//	                             member path with what reading it through the file system
//	                             gives: {"path":..,"sha256":..} or {"path":..,"error":..}
//
// ARCHIVE may be gzip- or bzip2-compressed (sniffed). Standard library only: it is
// built offline with Debian's golang-go (tests/support/tarref/build.py).
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

func emit(v map[string]interface{}) {
	out, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	os.Stdout.Write(append(out, '\n'))
}

// open returns the decompressed archive stream.
func open(path string) (io.Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReader(f)
	head, _ := br.Peek(3)
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return gzip.NewReader(br)
	case bytes.HasPrefix(head, []byte("BZh")):
		return bzip2.NewReader(br), nil
	}
	return br, nil
}

// describe is one header as Next() returned it, with a hash of the data Read gives.
func describe(hdr *tar.Header, tr *tar.Reader) map[string]interface{} {
	h := sha256.New()
	n, err := io.Copy(h, tr)
	line := map[string]interface{}{
		"name":     hdr.Name,
		"typeflag": string([]byte{hdr.Typeflag}),
		"size":     hdr.Size,
		"linkname": hdr.Linkname,
		"format":   hdr.Format.String(),
		"datalen":  n,
		"sha256":   hex.EncodeToString(h.Sum(nil)),
	}
	if len(hdr.PAXRecords) > 0 {
		line["pax"] = hdr.PAXRecords
	}
	if err != nil {
		line["data_error"] = err.Error()
	}
	return line
}

func list(path string) int {
	r, err := open(path)
	if err != nil {
		emit(map[string]interface{}{"error": err.Error()})
		return 0
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			emit(map[string]interface{}{"end": true})
			return 0
		}
		if err != nil {
			emit(map[string]interface{}{"error": err.Error()})
			return 0
		}
		line := describe(hdr, tr)
		emit(line)
		if _, bad := line["data_error"]; bad {
			return 0
		}
	}
}

// inside reports whether p (already free of symlinks) lies in root.
func inside(root, p string) bool {
	return p == root || strings.HasPrefix(p, root+string(os.PathSeparator))
}

// guardWrite refuses to create anything whose folder resolves outside root: the
// reference must never write outside its scratch folder, whatever the archive.
// (containers/storage would write there; the construction is then refused by regpatch.)
func guardWrite(root, p string) error {
	dir := filepath.Dir(p)
	for {
		real, err := filepath.EvalSymlinks(dir)
		if err == nil {
			if !inside(root, real) {
				return fmt.Errorf("reference refuses to write %q: its folder resolves outside the extraction folder", p)
			}
			return nil
		}
		if dir == root || dir == "/" {
			return err
		}
		dir = filepath.Dir(dir)
	}
}

// extractOne mirrors containers/storage 1.43 Unpack + createTarFile for one header.
func extractOne(root string, hdr *tar.Header, tr *tar.Reader) error {
	name := filepath.Clean(hdr.Name)
	if !strings.HasSuffix(name, string(os.PathSeparator)) {
		parentPath := filepath.Join(root, filepath.Dir(name))
		if _, err := os.Lstat(parentPath); err != nil && os.IsNotExist(err) {
			if err := guardWrite(root, parentPath); err != nil {
				return err
			}
			if err := os.MkdirAll(parentPath, 0o777); err != nil {
				return err
			}
		}
	}
	path := filepath.Join(root, name)
	rel, err := filepath.Rel(root, path)
	if err != nil {
		return err
	}
	if strings.HasPrefix(rel, ".."+string(os.PathSeparator)) {
		return fmt.Errorf("breakout: %q is outside of %q", hdr.Name, root)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.IsDir() && name == "." {
			return nil
		}
		if !(fi.IsDir() && hdr.Typeflag == tar.TypeDir) {
			if err := os.RemoveAll(path); err != nil {
				return err
			}
		}
	}
	if err := guardWrite(root, path); err != nil {
		return err
	}
	return create(root, path, hdr, tr)
}

func create(root, path string, hdr *tar.Header, tr *tar.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeDir:
		if fi, err := os.Lstat(path); !(err == nil && fi.IsDir()) {
			return os.Mkdir(path, 0o755)
		}
		return nil
	case tar.TypeReg, tar.TypeRegA:
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, tr)
		f.Close()
		return err
	case tar.TypeBlock, tar.TypeChar, tar.TypeFifo:
		// containers/storage makes a device node or fifo; an empty placeholder is enough
		// here (nobody reads it) and needs no privilege.
		return syscall.Mkfifo(path, 0o600)
	case tar.TypeLink:
		target := filepath.Join(root, hdr.Linkname)
		if !strings.HasPrefix(target, root) {
			return fmt.Errorf("breakout: invalid hardlink %q -> %q", target, hdr.Linkname)
		}
		return os.Link(target, path) // linkat(2) without AT_SYMLINK_FOLLOW on Linux, as handleLLink
	case tar.TypeSymlink:
		target := filepath.Join(filepath.Dir(path), hdr.Linkname)
		if !strings.HasPrefix(target, root) {
			return fmt.Errorf("breakout: invalid symlink %q -> %q", path, hdr.Linkname)
		}
		return os.Symlink(hdr.Linkname, path)
	case tar.TypeXGlobalHeader:
		return nil // "PAX Global Extended Headers found and ignored"
	}
	return fmt.Errorf("unhandled tar header type %d", hdr.Typeflag)
}

// readBack prints what reading a member's path through the file system gives: the
// kernel resolves it (os.ReadFile, as skopeo's os.Open: at most 40 symlinks), after a
// check that it stays in the extraction folder (never read a host file).
func readBack(root, name string) {
	line := map[string]interface{}{"path": name}
	defer emit(line)
	path := filepath.Join(root, name)
	if real, err := filepath.EvalSymlinks(path); err == nil && !inside(root, real) {
		line["error"] = "resolves outside the extraction folder"
		return
	}
	fi, err := os.Stat(path)
	if err != nil {
		line["error"] = errnoText(err)
		return
	}
	if !fi.Mode().IsRegular() {
		line["kind"] = "not a regular file"
		return
	}
	data, err := os.ReadFile(path)
	if err != nil {
		line["error"] = errnoText(err)
		return
	}
	sum := sha256.Sum256(data)
	line["sha256"] = hex.EncodeToString(sum[:])
}

func errnoText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}

func extract(path, dir string) int {
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		emit(map[string]interface{}{"error": err.Error()})
		return 2
	}
	r, err := open(path)
	if err != nil {
		emit(map[string]interface{}{"error": err.Error()})
		return 0
	}
	tr := tar.NewReader(r)
	var names []string
	seen := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			emit(map[string]interface{}{"end": true})
			break
		}
		if err != nil {
			emit(map[string]interface{}{"error": err.Error()})
			return 0
		}
		emit(map[string]interface{}{"name": hdr.Name, "typeflag": string([]byte{hdr.Typeflag})})
		if err := extractOne(root, hdr, tr); err != nil {
			emit(map[string]interface{}{"untar_error": err.Error()})
			return 0
		}
		clean := strings.TrimPrefix(filepath.Clean("/"+hdr.Name), "/")
		if clean != "" && !seen[clean] && hdr.Typeflag != tar.TypeXGlobalHeader {
			seen[clean] = true
			names = append(names, clean)
		}
	}
	for _, name := range names {
		readBack(root, name)
	}
	return 0
}

func main() {
	switch {
	case len(os.Args) == 3 && os.Args[1] == "list":
		os.Exit(list(os.Args[2]))
	case len(os.Args) == 4 && os.Args[1] == "extract":
		os.Exit(extract(os.Args[2], os.Args[3]))
	}
	fmt.Fprintln(os.Stderr, "usage: tarref list ARCHIVE | tarref extract ARCHIVE DIR")
	os.Exit(2)
}
