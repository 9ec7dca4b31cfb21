package schema

import (
	"strings"
	"testing"
	"testing/fstest"
)

func TestPostgresMigrations(t *testing.T) {
	migs := PostgresMigrations()
	if len(migs) == 0 {
		t.Fatal("no embedded PostgreSQL migrations")
	}
	for i, m := range migs {
		if i > 0 && m.Version <= migs[i-1].Version {
			t.Errorf("migration %d (%s) not after %d", m.Version, m.Name, migs[i-1].Version)
		}
		if strings.TrimSpace(m.SQL) == "" {
			t.Errorf("migration %d (%s) is empty", m.Version, m.Name)
		}
	}
	if migs[0].Version != 1 || migs[0].Name != "hierarchy" {
		t.Errorf("first migration = %d %q, want 1 \"hierarchy\"", migs[0].Version, migs[0].Name)
	}
}

func TestLoadMigrations(t *testing.T) {
	tests := []struct {
		name    string
		files   []string
		want    []int
		wantErr string
	}{
		{name: "sorted numerically", files: []string{"0010_b.sql", "0002_a.sql", "README.md"}, want: []int{2, 10}},
		{name: "duplicate version", files: []string{"0001_a.sql", "1_b.sql"}, wantErr: "share version"},
		{name: "no name", files: []string{"0001.sql"}, wantErr: "NNNN_name.sql"},
		{name: "not a number", files: []string{"abc_x.sql"}, wantErr: "NNNN_name.sql"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for _, f := range tt.files {
				fsys["m/"+f] = &fstest.MapFile{Data: []byte("select 1;")}
			}
			migs, err := loadMigrations(fsys, "m")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []int
			for _, m := range migs {
				got = append(got, m.Version)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("versions = %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("versions = %v, want %v", got, tt.want)
				}
			}
		})
	}
}
