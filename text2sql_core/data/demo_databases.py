"""The four SQLite databases of the demo dataset: schemas with English names, rows drawn from a seed.

Each table says how questions may talk about it: its nouns, one ``label`` column naming a row (a
person's name, an album's title), ``category`` columns with a small set of values (cities, genres)
and ``measure`` columns with numbers (ages, prices, years). The question templates in ``demo.py``
only use those roles, so adding a table here adds questions without touching a template.

Every parent table keeps a few rows that no child row points to, so that "which X have no Y"
questions have answers; labels are unique within a table, so grouping by a label is grouping by row.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEMO_DATABASES", "Column", "DemoDatabase", "Table", "build_rows", "tables_entry", "write_sqlite"]


@dataclass(frozen=True)
class Column:
    """A column and how questions name it; ``pool`` names the value pool a category or label draws from."""

    name: str
    type: str  # "text" | "number"
    role: str  # "key" | "fk" | "label" | "category" | "measure"
    phrase: str = ""
    plural: str = ""
    pool: str = ""
    #: measures: the spacing of thresholds questions compare against (0.1 for a GPA, 5000 for a salary)
    step: float = 1
    #: measures: whether a total makes sense (salaries, stock: yes; ages, years: no)
    additive: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    singular: str
    plural: str
    columns: tuple[Column, ...]
    #: primary-key column names (a link table has two)
    pk: tuple[str, ...]
    #: (column, referenced table, referenced column)
    fks: tuple[tuple[str, str, str], ...] = ()
    rows: int = 0

    def col(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def label(self) -> Column | None:
        return next((c for c in self.columns if c.role == "label"), None)

    def role(self, role: str) -> list[Column]:
        return [c for c in self.columns if c.role == role]


@dataclass(frozen=True)
class DemoDatabase:
    db_id: str
    tables: tuple[Table, ...]

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)


def _key(name: str) -> Column:
    return Column(name, "number", "key")


def _fk(name: str) -> Column:
    return Column(name, "number", "fk")


def _label(name: str, phrase: str, plural: str, pool: str) -> Column:
    return Column(name, "text", "label", phrase, plural, pool)


def _cat(name: str, phrase: str, plural: str, pool: str) -> Column:
    return Column(name, "text", "category", phrase, plural, pool)


def _num(name: str, phrase: str, step: float, additive: bool = False) -> Column:
    return Column(name, "number", "measure", phrase, step=step, additive=additive)


# ---------------------------------------------------------------------------------------------- pools
FIRST_NAMES = (
    "Maria", "James", "Aisha", "Liam", "Sofia", "Noah", "Elena", "Omar", "Chloe", "Mateo", "Hana", "Lucas",
    "Priya", "Ethan", "Zara", "Daniel", "Yuki", "Samuel", "Nora", "Victor", "Leila", "Hugo", "Ines", "Oscar",
    "Freya", "Tariq", "Clara", "Felix", "Amara", "Jonas", "Mei", "Rafael", "Greta", "Kofi", "Alma", "Pavel",
)
LAST_NAMES = (
    "Garcia", "Smith", "Khan", "Muller", "Rossi", "Tanaka", "Silva", "Novak", "Dubois", "Larsen", "Okafor",
    "Petrov", "Moreau", "Nguyen", "Kowalski", "Fischer", "Santos", "Brennan", "Haddad", "Lindqvist", "Mendez",
    "Ivanova", "Costa", "Weber", "Sato", "Horvat", "Bakker", "Romero", "Jensen", "Adeyemi", "Walsh", "Ferreira",
)
CITIES = (
    "Boston", "Chicago", "Denver", "Seattle", "Austin", "Portland", "Atlanta", "Miami", "Dallas", "Phoenix",
    "Detroit", "Houston", "Memphis", "Oakland", "Tampa", "Omaha", "Tucson", "Raleigh", "Madison", "Richmond",
)
COUNTRIES = (
    "France", "Germany", "Japan", "Brazil", "Canada", "Spain", "Italy", "Mexico", "Sweden", "Norway", "India",
    "Australia", "Kenya", "Chile",
)
POOLS: dict[str, tuple[str, ...]] = {
    "city": CITIES,
    "country": COUNTRIES,
    "dept_name": ("Physics", "Mathematics", "History", "Biology", "Chemistry", "Economics", "Philosophy",
                  "Linguistics", "Geology", "Music"),
    "building": ("Newton Hall", "Curie Hall", "Darwin Hall", "Turing Hall", "Hopper Hall", "Gauss Hall"),
    "rank": ("Professor", "Associate Professor", "Assistant Professor", "Lecturer"),
    "course_title": (
        "Quantum Mechanics", "Linear Algebra", "Modern History", "Cell Biology", "Organic Chemistry",
        "Game Theory", "Ethics", "Phonetics", "Mineralogy", "Music Theory", "Thermodynamics", "Number Theory",
        "Ancient Rome", "Genetics", "Polymer Science", "Public Finance", "Logic", "Syntax", "Volcanology",
        "Jazz Harmony", "Optics", "Topology", "Medieval Europe", "Ecology", "Biochemistry", "Labor Markets",
        "Aesthetics", "Semantics", "Hydrology", "Orchestration",
    ),
    "company": (
        "Northwind Traders", "Bluepeak Supply", "Cedar Goods", "Ironleaf Imports", "Sunrise Wholesale",
        "Harbor Crafts", "Maple Distribution", "Orion Parts", "Summit Textiles", "Redwood Partners",
        "Lakeside Foods", "Granite Works",
    ),
    "product_category": ("Electronics", "Kitchen", "Garden", "Toys", "Sports", "Books", "Clothing"),
    "product_adjective": ("Classic", "Compact", "Deluxe", "Smart", "Portable", "Wireless", "Organic", "Rustic",
                          "Ultra", "Eco"),
    "product_noun": ("Lamp", "Kettle", "Blender", "Backpack", "Speaker", "Notebook", "Jacket", "Drone", "Chair",
                     "Tent", "Puzzle", "Helmet"),
    "membership": ("Gold", "Silver", "Bronze", "Platinum"),
    "order_status": ("Shipped", "Pending", "Cancelled", "Delivered", "Returned"),
    "genre": ("Rock", "Jazz", "Pop", "Folk", "Blues", "Electronic", "Classical", "Reggae"),
    "artist_name": (
        "The Blue Owls", "Silver Harbor", "Neon Tides", "Velvet Engine", "Paper Lanterns", "Echo Valley",
        "Crimson Sky", "Atlas Choir", "Golden Hour", "Wild Orchids", "Midnight Ferry", "Iron Bloom", "Quiet Storm",
        "Lunar Drift", "Copper Crowns", "Static Bloom", "River Kings", "Glass Animals Tribute", "Solar Winds",
        "Northern Lights",
    ),
    "title_word1": ("Silver", "Broken", "Electric", "Hidden", "Golden", "Endless", "Velvet", "Burning", "Frozen",
                    "Wandering", "Distant", "Secret"),
    "title_word2": ("Dreams", "Roads", "Hearts", "Rivers", "Echoes", "Skies", "Letters", "Shadows", "Gardens",
                    "Waves", "Stars", "Cities"),
    "venue": (
        "Red Rock Arena", "Harbor Stage", "Grand Pavilion", "Union Hall", "Sunset Bowl", "Riverside Park",
        "Crystal Theater", "Old Mill", "Lighthouse Club", "Metro Dome", "Forest Amphitheater", "Civic Center",
    ),
    "concert_word1": ("Summer", "Winter", "Spring", "Autumn", "Midnight", "Harbor", "Desert", "Coastal"),
    "concert_word2": ("Jam", "Fest", "Nights", "Sessions", "Live", "Gala"),
    "office_name": ("Harbor Point", "Riverside Campus", "Hilltop Tower", "Central Plaza", "Lakeview House",
                    "Northgate Center", "Bayfront Office", "Summit Park"),
    "division_name": ("Engineering", "Sales", "Marketing", "Finance", "Legal", "Support", "Research", "Operations",
                      "Design", "Security", "Logistics", "Training"),
    "job_title": ("Engineer", "Manager", "Analyst", "Designer", "Technician", "Consultant"),
    "project_name": (
        "Falcon", "Aurora", "Nimbus", "Polaris", "Cobalt", "Horizon", "Zephyr", "Titan", "Mosaic", "Beacon",
        "Quartz", "Sequoia", "Vortex", "Meridian", "Pegasus", "Lotus", "Orbit", "Cascade", "Ember", "Granite",
        "Helix", "Juniper", "Kestrel", "Lumen", "Nova",
    ),
    "project_status": ("Active", "Completed", "Planned", "Paused"),
}

# ---------------------------------------------------------------------------------------------- schemas
DEMO_DATABASES: tuple[DemoDatabase, ...] = (
    DemoDatabase("college", (
        Table("department", "department", "departments", (
            _key("dept_id"), _label("name", "name", "names", "dept_name"),
            _cat("building", "building", "buildings", "building"),
            _num("budget", "budget", 50000, True), _num("founded", "founding year", 5),
        ), pk=("dept_id",), rows=10),
        Table("instructor", "instructor", "instructors", (
            _key("instructor_id"), _label("name", "name", "names", "person"), _fk("dept_id"),
            _cat("rank", "rank", "ranks", "rank"), _num("salary", "salary", 5000, True),
            _num("hire_year", "hire year", 1),
        ), pk=("instructor_id",), fks=(("dept_id", "department", "dept_id"),), rows=40),
        Table("student", "student", "students", (
            _key("student_id"), _label("name", "name", "names", "person"), _fk("dept_id"),
            _cat("home_city", "home city", "home cities", "city"), _num("age", "age", 1), _num("gpa", "gpa", 0.1),
        ), pk=("student_id",), fks=(("dept_id", "department", "dept_id"),), rows=60),
        Table("course", "course", "courses", (
            _key("course_id"), _label("title", "title", "titles", "course_title"), _fk("dept_id"),
            _num("credits", "credits", 1, True), _num("capacity", "capacity", 10, True),
        ), pk=("course_id",), fks=(("dept_id", "department", "dept_id"),), rows=30),
        Table("enrollment", "enrollment", "enrollments", (
            _fk("student_id"), _fk("course_id"), _num("score", "score", 5),
        ), pk=("student_id", "course_id"),
            fks=(("student_id", "student", "student_id"), ("course_id", "course", "course_id")), rows=150),
    )),
    DemoDatabase("retail_store", (
        Table("supplier", "supplier", "suppliers", (
            _key("supplier_id"), _label("name", "name", "names", "company"),
            _cat("country", "country", "countries", "country"), _num("rating", "rating", 1),
        ), pk=("supplier_id",), rows=12),
        Table("product", "product", "products", (
            _key("product_id"), _label("name", "name", "names", "product"), _fk("supplier_id"),
            _cat("category", "category", "categories", "product_category"), _num("price", "price", 5),
            _num("stock", "stock", 10, True),
        ), pk=("product_id",), fks=(("supplier_id", "supplier", "supplier_id"),), rows=45),
        Table("customer", "customer", "customers", (
            _key("customer_id"), _label("name", "name", "names", "person"),
            _cat("city", "city", "cities", "city"), _cat("membership", "membership level", "membership levels",
                                                          "membership"),
            _num("age", "age", 1),
        ), pk=("customer_id",), rows=50),
        Table("orders", "order", "orders", (
            _key("order_id"), _fk("customer_id"), _cat("status", "status", "statuses", "order_status"),
            _num("order_year", "order year", 1), _num("amount", "amount", 50, True),
        ), pk=("order_id",), fks=(("customer_id", "customer", "customer_id"),), rows=120),
        Table("order_item", "order item", "order items", (
            _fk("order_id"), _fk("product_id"), _num("quantity", "quantity", 1, True),
        ), pk=("order_id", "product_id"),
            fks=(("order_id", "orders", "order_id"), ("product_id", "product", "product_id")), rows=220),
    )),
    DemoDatabase("music_festival", (
        Table("artist", "artist", "artists", (
            _key("artist_id"), _label("name", "name", "names", "artist_name"),
            _cat("country", "country", "countries", "country"), _cat("genre", "genre", "genres", "genre"),
            _num("debut_year", "debut year", 1),
        ), pk=("artist_id",), rows=20),
        Table("album", "album", "albums", (
            _key("album_id"), _label("title", "title", "titles", "title"), _fk("artist_id"),
            _num("release_year", "release year", 1), _num("sales", "sales", 50000, True),
        ), pk=("album_id",), fks=(("artist_id", "artist", "artist_id"),), rows=45),
        Table("song", "song", "songs", (
            _key("song_id"), _label("title", "title", "titles", "title"), _fk("album_id"),
            _num("duration", "duration", 10, True), _num("plays", "plays", 20000, True),
        ), pk=("song_id",), fks=(("album_id", "album", "album_id"),), rows=110),
        Table("concert", "concert", "concerts", (
            _key("concert_id"), _label("name", "name", "names", "concert"), _fk("artist_id"),
            _cat("venue", "venue", "venues", "venue"), _cat("city", "city", "cities", "city"),
            _num("year", "year", 1), _num("attendance", "attendance", 2000, True),
        ), pk=("concert_id",), fks=(("artist_id", "artist", "artist_id"),), rows=40),
    )),
    DemoDatabase("tech_company", (
        Table("office", "office", "offices", (
            _key("office_id"), _label("name", "name", "names", "office_name"),
            _cat("city", "city", "cities", "city"), _num("opened_year", "opening year", 1),
            _num("floor_space", "floor space", 1000, True),
        ), pk=("office_id",), rows=8),
        Table("division", "division", "divisions", (
            _key("division_id"), _label("name", "name", "names", "division_name"), _fk("office_id"),
            _num("budget", "budget", 100000, True),
        ), pk=("division_id",), fks=(("office_id", "office", "office_id"),), rows=12),
        Table("employee", "employee", "employees", (
            _key("employee_id"), _label("name", "name", "names", "person"), _fk("division_id"),
            _cat("job_title", "job title", "job titles", "job_title"), _num("salary", "salary", 5000, True),
            _num("age", "age", 1), _num("hire_year", "hire year", 1),
        ), pk=("employee_id",), fks=(("division_id", "division", "division_id"),), rows=60),
        Table("project", "project", "projects", (
            _key("project_id"), _label("name", "name", "names", "project_name"), _fk("division_id"),
            _cat("status", "status", "statuses", "project_status"), _num("budget", "budget", 50000, True),
            _num("start_year", "start year", 1),
        ), pk=("project_id",), fks=(("division_id", "division", "division_id"),), rows=25),
        Table("assignment", "assignment", "assignments", (
            _fk("employee_id"), _fk("project_id"), _num("hours", "hours", 10, True),
        ), pk=("employee_id", "project_id"),
            fks=(("employee_id", "employee", "employee_id"), ("project_id", "project", "project_id")), rows=100),
    )),
)

#: value ranges of measure columns: (low, high, decimals); ints unless decimals > 0
_MEASURES: dict[tuple[str, str], tuple[float, float, int]] = {
    ("department", "budget"): (200_000, 2_000_000, -3), ("department", "founded"): (1850, 1995, 0),
    ("instructor", "salary"): (48_000, 180_000, -3), ("instructor", "hire_year"): (1988, 2023, 0),
    ("student", "age"): (17, 30, 0), ("student", "gpa"): (2.0, 4.0, 2),
    ("course", "credits"): (1, 6, 0), ("course", "capacity"): (20, 250, 0),
    ("enrollment", "score"): (40, 100, 0),
    ("supplier", "rating"): (1, 5, 0),
    ("product", "price"): (3, 400, 2), ("product", "stock"): (0, 500, 0),
    ("customer", "age"): (18, 75, 0),
    ("orders", "order_year"): (2016, 2024, 0), ("orders", "amount"): (15, 2500, 2),
    ("order_item", "quantity"): (1, 12, 0),
    ("artist", "debut_year"): (1965, 2020, 0),
    ("album", "release_year"): (1968, 2024, 0), ("album", "sales"): (5_000, 2_000_000, -3),
    ("song", "duration"): (120, 420, 0), ("song", "plays"): (1_000, 900_000, 0),
    ("concert", "year"): (2010, 2024, 0), ("concert", "attendance"): (800, 60_000, -2),
    ("office", "opened_year"): (1990, 2022, 0), ("office", "floor_space"): (2_000, 40_000, -2),
    ("division", "budget"): (300_000, 5_000_000, -3),
    ("employee", "salary"): (42_000, 210_000, -3), ("employee", "age"): (22, 64, 0),
    ("employee", "hire_year"): (2005, 2024, 0),
    ("project", "budget"): (50_000, 2_500_000, -3), ("project", "start_year"): (2015, 2025, 0),
    ("assignment", "hours"): (5, 400, 0),
}


def _measure(rng: random.Random, table: str, col: str) -> int | float:
    low, high, decimals = _MEASURES[(table, col)]
    if decimals > 0:
        return round(rng.uniform(low, high), decimals)
    value = rng.randint(int(low), int(high))
    return int(round(value, decimals)) if decimals < 0 else value


def _labels(rng: random.Random, pool: str, n: int) -> list[str]:
    """``n`` distinct labels from a pool; people, products and titles are composed from word pools."""
    if pool == "person":
        names = [f"{f} {s}" for f in FIRST_NAMES for s in LAST_NAMES]
    elif pool == "product":
        names = [f"{a} {b}" for a in POOLS["product_adjective"] for b in POOLS["product_noun"]]
    elif pool == "concert":
        names = [f"{a} {b}" for a in POOLS["concert_word1"] for b in POOLS["concert_word2"]]
    elif pool == "title":
        names = [f"{a} {b}" for a in POOLS["title_word1"] for b in POOLS["title_word2"]]
    else:
        names = list(POOLS[pool])
    if n > len(names):
        raise ValueError(f"pool {pool!r} has {len(names)} values, {n} needed")
    return rng.sample(names, n)


def build_rows(db: DemoDatabase, rng: random.Random) -> dict[str, list[tuple[Any, ...]]]:
    """Rows of every table, parents first; each parent keeps ~15% of its rows childless."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    childless: dict[str, set[int]] = {}
    for table in db.tables:
        n = table.rows
        fk_of = {c: (rt, rc) for c, rt, rc in table.fks}
        link = len(table.pk) > 1
        parent_ids = {c: sorted(set(range(1, db.table(rt).rows + 1)) - childless[rt]) for c, (rt, _) in fk_of.items()}
        pairs: list[tuple[int, ...]] = []
        if link:  # a link table: distinct (parent, parent) pairs
            a, b = table.pk
            every = [(x, y) for x in parent_ids[a] for y in parent_ids[b]]
            pairs = sorted(rng.sample(every, n))
        values: dict[str, list[Any]] = {}
        for col in table.columns:
            if col.role == "key":
                values[col.name] = list(range(1, n + 1))
            elif col.role == "fk":
                values[col.name] = ([p[table.pk.index(col.name)] for p in pairs] if link
                                    else [rng.choice(parent_ids[col.name]) for _ in range(n)])
            elif col.role == "label":
                values[col.name] = _labels(rng, col.pool, n)
            elif col.role == "category":
                values[col.name] = [rng.choice(POOLS[col.pool]) for _ in range(n)]
            else:
                values[col.name] = [_measure(rng, table.name, col.name) for _ in range(n)]
        rows[table.name] = list(zip(*(values[c.name] for c in table.columns), strict=True))
        if not link:
            keep = max(1, round(n * 0.15))
            childless[table.name] = set(rng.sample(range(1, n + 1), keep))
    return rows


def write_sqlite(db: DemoDatabase, rows: dict[str, list[tuple[Any, ...]]], path: Path) -> None:
    """Create the database file with primary and foreign keys declared (same rows, same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    try:
        for table in db.tables:
            defs = [f"{c.name} {'TEXT' if c.type == 'text' else ('REAL' if _is_real(table, c) else 'INTEGER')}"
                    for c in table.columns]
            defs.append(f"PRIMARY KEY ({', '.join(table.pk)})")
            defs += [f"FOREIGN KEY ({c}) REFERENCES {rt}({rc})" for c, rt, rc in table.fks]
            conn.execute(f"CREATE TABLE {table.name} ({', '.join(defs)})")
            marks = ", ".join("?" * len(table.columns))
            conn.executemany(f"INSERT INTO {table.name} VALUES ({marks})", rows[table.name])
        conn.commit()
    finally:
        conn.close()


def _is_real(table: Table, col: Column) -> bool:
    return col.role == "measure" and _MEASURES[(table.name, col.name)][2] > 0


def tables_entry(db: DemoDatabase) -> dict[str, Any]:
    """The database's entry in a Spider ``tables.json`` (a link table's key is listed column by column)."""
    col_names: list[list[Any]] = [[-1, "*"]]
    col_orig: list[list[Any]] = [[-1, "*"]]
    types = ["text"]
    index: dict[tuple[str, str], int] = {}
    for t, table in enumerate(db.tables):
        for col in table.columns:
            index[(table.name, col.name)] = len(col_orig)
            col_orig.append([t, col.name])
            col_names.append([t, col.name.replace("_", " ")])
            types.append(col.type)
    pks = [index[(t.name, c)] for t in db.tables for c in t.pk]
    fks = [[index[(t.name, c)], index[(rt, rc)]] for t in db.tables for c, rt, rc in t.fks]
    return {
        "column_names": col_names,
        "column_names_original": col_orig,
        "column_types": types,
        "db_id": db.db_id,
        "foreign_keys": fks,
        "primary_keys": pks,
        "table_names": [t.name.replace("_", " ") for t in db.tables],
        "table_names_original": [t.name for t in db.tables],
    }

