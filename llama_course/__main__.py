import sys

from llama_course.cli import main

sys.exit(main())
