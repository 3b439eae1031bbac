"""Text-to-SQL datasets: readers (``formats``), the DB-GPT-Hub prompt (``prompt``), prepared splits
(``dataset``), the demo dataset (``demo``, ``demo_databases``) and the run config's ``data`` section
(``config``)."""
