package dashboards

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDatasourceHoldsNoPassword: the provisioned ClickHouse datasource
// names the file Grafana reads the reader's password from, and holds no
// password itself, in what Files generates and in the committed file.
func TestDatasourceHoldsNoPassword(t *testing.T) {
	committed, err := os.ReadFile(filepath.Join("..", DatasourceFile))
	if err != nil {
		t.Fatal(err)
	}
	files, err := Files(Options{Database: "canopy", Reader: "canopy_reader", PasswordFile: "/secrets/reader"})
	if err != nil {
		t.Fatal(err)
	}
	password := regexp.MustCompile(`(?m)^\s*password:\s*(.*)$`)
	for name, text := range map[string]string{"committed": string(committed), "generated": string(files[DatasourceFile])} {
		got := password.FindAllStringSubmatch(text, -1)
		if len(got) != 1 {
			t.Fatalf("%s: %d password lines, want 1:\n%s", name, len(got), text)
		}
		want := "$__file{/run/secrets/clickhouse_reader_password}"
		if name == "generated" {
			want = "$__file{/secrets/reader}"
		}
		if got[0][1] != want {
			t.Errorf("%s: password: %q, want %q", name, got[0][1], want)
		}
		if strings.Contains(text, "password: canopy_reader") {
			t.Errorf("%s: holds the reader's old default password", name)
		}
	}
	if _, err := Files(Options{PasswordFile: "/x}\npassword: y"}); err == nil {
		t.Error("a password file that breaks out of $__file{…} was accepted")
	}
}
